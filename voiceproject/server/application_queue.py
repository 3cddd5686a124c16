"""The queue daphne gives each application (`daphne.server.Server.create_application`).

daphne puts every frame in an unbounded `asyncio.Queue` for the application. For a
websocket, `create_application` here gives a `FlowQueue` instead: it counts what it
holds (each message at its cost in memory: its payload and a fixed charge, so that
empty frames count too) and pauses reading the socket above a high-water mark,
resuming below a low one, and it says so in the scope (`flow_control` describes the
contract). daphne's
`Server` has one other patch: `shutdown` (`kill_all_applications`).

The same function gives a websocket's scope the `scheme` daphne leaves out: `wss` when
daphne serves TLS itself (`-e ssl:…`), else `ws`, so that the origin check
(accounts.middleware.own_origin) knows a browser reached `https://host`.

Written against daphne 4.2 (`Server.create_application`, `Server.connections`);
`install()` refuses other versions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from functools import partial
from typing import Any

from django.conf import settings
from twisted.internet.interfaces import ISSLTransport

from transcription import metrics
from voiceproject.server.versions import require_versions, tested

FLOW_CONTROL = "voiceproject.flow_control"
TESTED_VERSIONS = tested("daphne")
HIGH_WATER_BYTES = 256 * 1024
# What a queued message costs beside its payload: daphne's dict of two keys (184
# bytes), the payload's object header (33 bytes for bytes, 40-80 for a str), the
# deque's slot, rounded up (tests/voiceproject/test_application_queue.py measures
# it). An empty frame is 6 bytes on the wire and this much in the queue.
MESSAGE_COST = 256


def message_cost(message: dict[str, Any]) -> int:
    """The memory a queued message holds: its payload (a str at up to 4 bytes a
    character) and MESSAGE_COST."""
    if (text := message.get("text")) is not None:
        return MESSAGE_COST + (len(text) if text.isascii() else 4 * len(text))
    return MESSAGE_COST + len(message.get("bytes") or b"")


class FlowQueue:
    """An application's input queue that pauses its socket while it holds too much
    (`held`: the `message_cost` of what it holds).

    What daphne's `asyncio.Queue` does for an application (`put_nowait`, `get`), with
    one deque and a future only while the application waits: a session keeps its queue
    for its whole life, and an `asyncio.Queue` (four deques) costs 2.4 KiB more.
    """

    def __init__(self, transport, *, high_water: int) -> None:
        self.transport = transport
        self.high_water = high_water
        self.low_water = high_water // 4
        self.held = 0
        self.paused = False
        self.disconnected = asyncio.Event()
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._getters: list[asyncio.Future] = []

    def put_nowait(self, item: dict[str, Any]) -> None:
        self._items.append(item)
        self.held += message_cost(item)
        if item.get("type") == "websocket.disconnect":
            self.disconnected.set()
            if self.paused:  # the socket is gone: nothing to resume
                self.paused = False
                metrics.READING_PAUSED.dec()
        elif self.held > self.high_water and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
            metrics.READING_PAUSED.inc()
        self._wake_next()

    async def get(self) -> dict[str, Any]:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_next()  # woken, then cancelled: the next one takes it
                raise
        item = self._items.popleft()
        self.held -= message_cost(item)
        if self.paused and self.held <= self.low_water:
            self.paused = False
            self.transport.resumeProducing()
            metrics.READING_PAUSED.dec()
        return item

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


def high_water_bytes() -> int:
    return max(HIGH_WATER_BYTES, 2 * settings.MAX_FRAME_BYTES)


def websocket_scheme(transport) -> str:
    """`wss` over daphne's own TLS (Twisted's TLS transport), else `ws`."""
    return "wss" if ISSLTransport.providedBy(transport) else "ws"


def create_application(self, protocol, scope):
    """daphne 4.2's `Server.create_application`, with a FlowQueue for websockets
    and their scheme in the scope."""
    assert "application_instance" not in self.connections[protocol]  # noqa: S101
    input_queue: asyncio.Queue | FlowQueue
    if scope.get("type") == "websocket":
        scope.setdefault("scheme", websocket_scheme(protocol.transport))
        input_queue = FlowQueue(protocol.transport, high_water=high_water_bytes())
        scope.setdefault("extensions", {})[FLOW_CONTROL] = {
            "disconnected": input_queue.disconnected
        }
    else:
        input_queue = asyncio.Queue()
    scope.setdefault("asgi", {"version": "3.0"})
    application_instance = self.application(
        scope=scope,
        receive=input_queue.get,
        send=partial(self.handle_reply, protocol),
    )
    if protocol not in self.connections:
        return None
    self.connections[protocol]["application_instance"] = asyncio.ensure_future(
        application_instance,
        loop=asyncio.get_event_loop(),
    )
    return input_queue


def install() -> None:
    """Patch daphne's Server once (no-op without daphne); refuses untested versions."""
    try:
        from daphne.server import Server
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(Server, "_flow_queue_patched", False):
        return
    require_versions("voiceproject.server.flow_control", TESTED_VERSIONS)
    Server.create_application = create_application
    Server._flow_queue_patched = True
