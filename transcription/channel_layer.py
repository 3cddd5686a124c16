"""When the channel layer (Redis) fails: its errors, and one record per outage.

Nothing in a session's audio path uses the layer: only the voice loop's replies
travel through it (docs/operations.md §"Outages"). A failed layer call is counted
in `voiceproject_channel_layer_errors` every time, and logged once per outage per
process: when the first call fails, and when a call succeeds again. Meanwhile one
probe per process finds when it answers (`until_back`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from transcription import metrics

logger = logging.getLogger(__name__)

# What a layer call raises while Redis is away (refused, reset, timed out). Anything
# else is a bug and propagates.
LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# While the layer is away, one call every PROBE_SECONDS per process (whatever the
# number of sessions) tells when it answers again; everything waiting for it then
# goes on at once.
PROBE_SECONDS = 0.5
PROBE_GROUP = "voiceproject.probe"


class LayerHealth:
    """This process's view of the layer: away since when, how many calls failed,
    and the probe that says when it is back."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._back = asyncio.Event()
        self._probe: asyncio.Task | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def _this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): start afresh
            self.__init__()  # type: ignore[misc]
            self._loop = loop

    def failed(self, operation: str, exc: BaseException) -> None:
        """A layer call failed: counted, logged once per outage, probed."""
        self._this_loop()
        metrics.CHANNEL_LAYER_ERRORS.labels(operation=operation).inc()
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning(
                "channel layer unavailable (%s in %s: %s): sessions go on, "
                "their replies wait in the database",
                exc.__class__.__name__,
                operation,
                exc,
            )
        if self._probe is None:
            self._back = asyncio.Event()
            self._probe = asyncio.create_task(self._probing())

    async def _probing(self) -> None:
        layer = get_channel_layer()
        try:
            while True:
                await asyncio.sleep(PROBE_SECONDS)
                try:
                    # Removes nothing from a group that does not exist: no write.
                    await layer.group_discard(PROBE_GROUP, "probe")
                except LAYER_ERRORS:
                    metrics.CHANNEL_LAYER_ERRORS.labels(operation="probe").inc()
                    continue
                self.answered()
                return
        finally:
            if self._probe is asyncio.current_task():
                self._probe = None

    def answered(self) -> None:
        """A layer call succeeded: whatever waits for the layer goes on."""
        self._this_loop()
        if self.down_since is not None:
            logger.warning(
                "channel layer is back after %.1f s (%d failed calls)",
                time.monotonic() - self.down_since,
                self.failures,
            )
            self.down_since = None
            self.failures = 0
        self._back.set()

    async def until_back(self) -> None:
        """Once the layer answered since it last failed (at once if it has not)."""
        self._this_loop()
        if self._probe is not None:
            await self._back.wait()


layer_health = LayerHealth()
