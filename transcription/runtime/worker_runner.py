"""This process's batch worker, as a task of the server's event loop.

With VOICE_WORKER_IN_PROCESS (the embedded default) one BatchWorker runs beside the
sessions; with `manage.py run_worker` processes, none does.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from django.conf import settings

from transcription.voice_loop.worker import BatchWorker


@dataclass(slots=True)
class _Runner:
    loop: asyncio.AbstractEventLoop
    worker: BatchWorker
    task: asyncio.Task


_runner: _Runner | None = None


def ensure_in_process() -> None:
    """Start this process's worker task once (VOICE_WORKER_IN_PROCESS)."""
    global _runner
    if not settings.VOICE_WORKER_IN_PROCESS:
        return
    loop = asyncio.get_running_loop()
    if _runner is None or _runner.loop is not loop or _runner.task.done():
        worker = BatchWorker()
        _runner = _Runner(loop, worker, loop.create_task(worker.run()))


def wake_in_process() -> None:
    """Look for due batches now (after END_OF_STREAM) instead of at the next poll."""
    if _runner is not None and not _runner.task.done():
        _runner.worker.wake.set()


async def stop_in_process(grace: float = 0.0) -> None:
    """Stop this process's worker task (shutdown, tests): deliveries under way get
    `grace` seconds, the rest are released."""
    global _runner
    runner, _runner = _runner, None
    if runner is not None and runner.loop is asyncio.get_running_loop():
        runner.worker.stop(grace)
        with contextlib.suppress(asyncio.CancelledError):
            await runner.task
