"""Graceful stop for daphne: the application drains before daphne cancels it.

On SIGTERM or SIGINT daphne stops Twisted's reactor, whose "before shutdown"
trigger, `Server.kill_all_applications`, cancels every application instance at once:
a WebSocket client gets no close frame (1006) and what its session still had to say
is lost. Installed, that trigger instead

1. awaits `drain(DRAIN_SECONDS)` (the application ends its sessions its own way;
   bounded here too, a little longer, in case it does not keep its own bound),
2. lets connections whose clients answered the close finish (up to SETTLE_SECONDS),
3. cancels what is left, as daphne does (skipping connections that have no
   application yet, on which daphne 4.2.3 raises KeyError),
4. awaits `stopped()`: the application stops its worker processes and threads
   before the interpreter exits, not during its teardown.

Meanwhile the reactor runs: sockets are served, listening continues (the
application refuses new sessions). Written against daphne 4.2 (`Server.
kill_all_applications` registered by `Server.run`, `Server.connections`);
`install()` refuses other versions. daphne's `Server` has one other patch:
`application_queue` (`create_application`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from django.conf import settings

from voiceproject.server.versions import require_versions, tested

logger = logging.getLogger(__name__)

TESTED_VERSIONS = tested("daphne")
SETTLE_SECONDS = 2.0
DRAIN_SLACK_SECONDS = 5.0

Drain = Callable[[float], Awaitable[None]]
Stopped = Callable[[], Awaitable[None]]


def _instances(server) -> list[asyncio.Future]:
    found = (d.get("application_instance") for d in server.connections.values())
    return [instance for instance in found if instance is not None]


async def _settle(server, seconds: float) -> None:
    if pending := [i for i in _instances(server) if not i.done()]:
        await asyncio.wait(pending, timeout=seconds)


async def _cancel_all(server) -> None:
    pending = [i for i in _instances(server) if not i.done()]
    for instance in pending:
        instance.cancel()
    logger.info("Killed %i pending application instances", len(pending))
    await asyncio.gather(*pending, return_exceptions=True)


async def graceful_stop(server, drain: Drain, stopped: Stopped) -> None:
    seconds = settings.DRAIN_SECONDS
    try:
        await asyncio.wait_for(drain(seconds), seconds + DRAIN_SLACK_SECONDS)
    except Exception:
        logger.exception("draining the application failed")
    await _settle(server, SETTLE_SECONDS)
    await _cancel_all(server)
    try:
        await stopped()
    except Exception:
        logger.exception("stopping the application failed")


def install(*, drain: Drain, stopped: Stopped) -> None:
    """Patch daphne once (no-op without daphne); refuses untested versions."""
    try:
        from daphne.server import Server
        from twisted.internet import defer
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(Server, "_graceful_stop_patched", False):
        return
    require_versions(__name__, TESTED_VERSIONS)

    def kill_all_applications(self):
        # A Deferred: the reactor waits for it before it goes on shutting down.
        stop = asyncio.ensure_future(graceful_stop(self, drain, stopped))
        return defer.Deferred.fromFuture(stop)

    Server.kill_all_applications = kill_all_applications
    Server._graceful_stop_patched = True
