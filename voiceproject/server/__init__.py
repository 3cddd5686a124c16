"""Patches of daphne, autobahn and Twisted, installed in one explicit order.

Every patch is version-guarded (`versions`): written for the versions pyproject.toml
pins, refused or left off for others. `install()` is the one place that applies them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


def install(
    *, drain: Callable[[float], Awaitable[None]], stopped: Callable[[], Awaitable[None]]
) -> None:
    """Apply every server patch, in order (see docs/architecture.md)."""
    from voiceproject.server import (
        access_log,
        closes,
        flow_control,
        relay_speedups,
        shutdown,
    )

    closes.install()
    access_log.install()
    flow_control.install()
    shutdown.install(drain=drain, stopped=stopped)
    relay_speedups.install()
