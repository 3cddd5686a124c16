"""A server process's orderly stop (SIGTERM, SIGINT), from voiceproject.server.shutdown.

`drain()`: new sessions are refused (`{"error"}` + 1013); each open session stops
taking audio, its engine flushes what it heard, its finals (and, within the time,
their replies) are sent, then one `{"error"}` and close 1001; it is recorded as
completed, with a "shutdown" entry. `stop_process()` then stops what would otherwise
still run while the interpreter exits: the in-process batch worker (its unfinished
batches released), the decoding processes and the blocking thread pools.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from typing import Protocol

from transcription import executors
from transcription.runtime import worker_runner

logger = logging.getLogger(__name__)

# The in-process worker's deliveries get this long to finish; the rest are released.
WORKER_GRACE_SECONDS = 2.0


class Drainable(Protocol):
    async def drain(self, deadline: float) -> None:
        """End the session for a shutdown by `deadline` (event-loop time)."""


_sessions: weakref.WeakSet[Drainable] = weakref.WeakSet()
_draining = False


def draining() -> bool:
    """Whether this process is shutting down (new sessions are refused)."""
    return _draining


def session_opened(session: Drainable) -> None:
    _sessions.add(session)


def session_gone(session: Drainable) -> None:
    _sessions.discard(session)


async def drain(seconds: float) -> None:
    """Drain every open session of this process, within `seconds`."""
    global _draining
    _draining = True
    sessions = list(_sessions)
    logger.info(
        "shutting down: draining %d sessions (at most %g s)", len(sessions), seconds
    )
    deadline = asyncio.get_running_loop().time() + seconds
    results = await asyncio.gather(
        *(session.drain(deadline) for session in sessions), return_exceptions=True
    )
    for result in results:
        if isinstance(result, Exception):
            logger.error("a session did not drain", exc_info=result)


async def stop_process() -> None:
    """Stop the worker, decoders and thread pools before the interpreter exits."""
    await worker_runner.stop_in_process(grace=WORKER_GRACE_SECONDS)
    if (offline := sys.modules.get("transcription.engines.pool")) is not None:
        # Joined here: left to the interpreter's exit, their threads met a
        # half-torn-down runtime (tracebacks, and once in a while a crash).
        await asyncio.to_thread(offline.shutdown_pools)
    await asyncio.to_thread(executors.shutdown_pools)
    logger.info("shut down")
