"""This process's sessions, bounded by MAX_SESSIONS_PER_PROCESS.

`reserve()` and `Slot.release()` never await, so a burst of connections cannot all
pass the check before any of them is counted.
"""

from __future__ import annotations

from django.conf import settings

from transcription import metrics

_open = 0


class Slot:
    """One of the process's sessions; released once, whatever calls it first."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = True

    def release(self) -> None:
        global _open
        if self.held:
            self.held = False
            _open -= 1
            metrics.ACTIVE_SESSIONS.dec()


def reserve() -> Slot | None:
    """A slot for one more session, or None when the process is full."""
    global _open
    if _open >= settings.MAX_SESSIONS_PER_PROCESS:
        return None
    _open += 1
    metrics.ACTIVE_SESSIONS.inc()
    return Slot()


def open_count() -> int:
    """Sessions of this process holding a slot now."""
    return _open
