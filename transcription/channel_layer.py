"""When the channel layer (Redis) fails: its errors, and one record per outage.

Nothing in a session's audio path uses the layer: only the voice loop's replies
travel through it (docs/operations.md §"Outages"). A failed layer call is counted
in `voiceproject_channel_layer_errors` every time, and logged once per outage per
process: when the first call fails, and when a call succeeds again.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from transcription import metrics

logger = logging.getLogger(__name__)

# What a layer call raises while Redis is away (refused, reset, timed out). Anything
# else is a bug and propagates.
LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# Backoff between attempts to reach the layer again: doubled from the first, capped.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0


class LayerHealth:
    """This process's view of the layer: away since when, how many calls failed."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, operation: str, exc: BaseException) -> None:
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

    def answered(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "channel layer is back after %.1f s (%d failed calls)",
                time.monotonic() - self.down_since,
                self.failures,
            )
            self.down_since = None
            self.failures = 0


layer_health = LayerHealth()


def next_delay(delay: float) -> float:
    return min(delay * 2, RETRY_MAX_SECONDS)
