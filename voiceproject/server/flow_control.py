"""Frame size and flow control for daphne's WebSockets (SPEC §3, §9).

Two things daphne does not do for an audio relay:

- Frames over MAX_FRAME_BYTES. autobahn learns a frame's length from its header and
  daphne's own limit (1 MiB) then drops the TCP connection: the client sees 1006 and
  the consumer never hears of it. Here the limit is MAX_FRAME_BYTES, the payload of
  an oversized frame is discarded as it arrives (never buffered), and the consumer
  gets `{"type": "websocket.receive", "bytes": b"", "too_big": <length>}` so that it
  sends `{"error"}`, closes 1009 and records why.
- Flow control. daphne puts every frame in an unbounded queue for the application.
  Here a websocket's queue counts the bytes it holds and pauses reading the socket
  above a high-water mark, resuming below a low one. A consumer that stops calling
  `receive()` while its engine's backlog is full therefore slows the client down
  (TCP does the rest) instead of letting its audio pile up in memory. The scope
  says so with `scope["extensions"]["voiceproject.flow_control"]`, which also
  carries an event set when the client disconnects (a consumer waiting for room can
  stop waiting).

Written against daphne 4.2 and autobahn 26.11 (their internals: `Server.
create_application`, `WebSocketProtocol._max_message_size_exceeded`); `install()`
refuses other versions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from functools import partial
from typing import Any

from django.conf import settings

from voiceproject.server.versions import require_versions, tested

FLOW_CONTROL = "voiceproject.flow_control"
TESTED_VERSIONS = tested("daphne", "autobahn")
HIGH_WATER_BYTES = 256 * 1024


def _size(message: dict[str, Any]) -> int:
    return len(message.get("bytes") or message.get("text") or b"")


class FlowQueue:
    """An application's input queue that pauses its socket while it holds too much.

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
        self.held += _size(item)
        if item.get("type") == "websocket.disconnect":
            self.disconnected.set()
        elif self.held > self.high_water and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
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
        self.held -= _size(item)
        if self.paused and self.held <= self.low_water:
            self.paused = False
            self.transport.resumeProducing()
        return item

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


def high_water_bytes() -> int:
    return max(HIGH_WATER_BYTES, 2 * settings.MAX_FRAME_BYTES)


def create_application(self, protocol, scope):
    """daphne 4.2's `Server.create_application`, with a FlowQueue for websockets."""
    assert "application_instance" not in self.connections[protocol]  # noqa: S101
    input_queue: asyncio.Queue | FlowQueue
    if scope.get("type") == "websocket":
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


def _limit_frames(original_on_connect):
    def onConnect(self, request):
        # Per connection (autobahn copied the factory's 1 MiB at connectionMade).
        self.maxFramePayloadSize = settings.MAX_FRAME_BYTES
        self.maxMessagePayloadSize = settings.MAX_FRAME_BYTES
        return original_on_connect(self, request)

    return onConnect


def _max_message_size_exceeded(self, msg_size, max_msg_size, reason) -> None:
    """Instead of dropping the connection: discard the payload, tell the consumer."""
    if self.failedByMe:
        return
    # autobahn's own flag for "this connection is being failed": every further
    # payload byte is discarded as it arrives (onMessageFrameData checks it).
    self.failedByMe = True
    queue = getattr(self, "application_queue", None)
    if queue is None:  # no application yet: autobahn's own handling
        self._fail_connection(self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG, reason)
        return
    queue.put_nowait({"type": "websocket.receive", "bytes": b"", "too_big": msg_size})


def install() -> None:
    """Patch daphne once (no-op without daphne); refuses untested versions."""
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(Server, "_flow_control_patched", False):
        return
    require_versions(__name__, TESTED_VERSIONS)
    Server.create_application = create_application
    WebSocketProtocol.onConnect = _limit_frames(WebSocketProtocol.onConnect)
    WebSocketProtocol._max_message_size_exceeded = _max_message_size_exceeded
    Server._flow_control_patched = True
