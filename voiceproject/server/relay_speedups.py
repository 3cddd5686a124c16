"""Per-frame shortcuts for daphne, autobahn and Channels (SPEC §9, README Performance).

An audio stream is a WebSocket frame in and a message out every 32 ms, so work done
per frame is multiplied by ~31 a second per session. Two such costs do nothing for
us and are skipped here, each only in the case where skipping it changes nothing:

- autobahn formats a debug line for every read and every write (`hltype`/`hlval`,
  which style text with click) before its logger drops it. When its debug logging is
  off, `dataReceived` and the plain path of `sendData` run without it.
- Channels' session middleware looks into the (lazy) session on every message it
  passes, though it only acts on `http.response.start`; other messages go straight on.
- Twisted's TCP write buffers every message and has the event loop watch the socket
  for one write (`write_now`): with nothing buffered, the bytes go out at once.
- autobahn parses every frame through a dozen calls (frame and message begin, data and
  end hooks, a masker object, a Deferred for "message" listeners nobody registered).
  A whole, masked, unfragmented binary frame within the size limits is taken in one
  step (`processData`), and a message that fits one unmasked frame is written in one
  (`sendMessage`); every other frame (text, control, fragmented, compressed, too big,
  malformed) takes autobahn's own path. daphne's `websocket.send` on an open socket
  goes straight to `sendMessage` (`handle_reply`).
"""

import logging

from channels.sessions import InstanceSessionWrapper
from twisted.internet import tcp

from voiceproject.server.versions import tested, versions_untested

logger = logging.getLogger(__name__)
ORIGINALS: dict[str, object] = {}  # what a shortcut replaced, for the tests
TESTED_VERSIONS = tested("daphne", "autobahn", "channels", "twisted")


def _debug_enabled(log) -> bool:
    # txaio swaps a disabled level's method for a function named _no_op.
    return getattr(log.debug, "__name__", "") != "_no_op"


def install_session_fast_path() -> None:
    if getattr(InstanceSessionWrapper, "_fast_path", False):
        return
    original = InstanceSessionWrapper.send

    async def send(self, message):
        if message["type"] not in self.save_message_types:
            return await self.real_send(message)
        return await original(self, message)

    InstanceSessionWrapper.send = send
    InstanceSessionWrapper._fast_path = True


def write_now(transport, data: bytes) -> None:
    """`transport.write(data)`, sent on the socket at once when nothing waits before it.

    Twisted's TCP write only buffers, then registers the socket with the event loop
    for one write and unregisters it after: two system calls and their Python around
    every message. With nothing buffered there is no order to keep, so the bytes go
    out now; what the socket does not take (its buffer is full) goes through Twisted's
    buffer as usual. Other transports (TLS, tests) write as they always do.
    """
    if (
        type(transport) is not tcp.Server
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        sent = 0  # would block, or the connection is gone: Twisted finds out
    if sent < len(data):
        transport.write(data[sent:])


def unmask(mask: bytes, payload: bytes) -> bytes:
    """RFC 6455 §5.3: payload XOR the 4-byte mask, repeated (one C-level XOR)."""
    n = len(payload)
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


def _whole_binary_frame(self) -> tuple[int, int] | None:
    """(payload start, end) when `self.data` begins with a complete, masked, final
    binary frame that autobahn would take as one message within the size limits
    and with no hook to call but `onMessage`; else None."""
    data = self.data
    if (
        len(data) < 7
        or data[0] != 0x82  # FIN, no RSV bits, binary
        or self.current_frame is not None
        or self.inside_message
        or self.failedByMe
        or self.logFrames
        or self.trackedTimings
        or not self.applyMask
        or self._listeners is not None
        or not self.factory.isServer
    ):
        return None
    length = data[1] ^ 0x80  # masked: the high bit set, the length below it
    if length < 1 or length > 126:
        return None
    start = 6
    if length == 126:
        length = (data[2] << 8) | data[3]
        if length < 126:  # not minimal: autobahn's protocol violation
            return None
        start = 8
    end = start + length
    if (
        len(data) < end
        or 0 < self.maxFramePayloadSize < length
        or 0 < self.maxMessagePayloadSize < length
    ):
        return None
    return start, end


def install_autobahn_fast_path() -> None:
    try:
        from daphne import ws_protocol
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebSocketProtocol, "_fast_path", False):
        return
    original_reply = ORIGINALS["handle_reply"] = WebSocketProtocol.handle_reply
    original_received = WebSocketProtocol.dataReceived
    original_send = WebSocketProtocol.sendData
    original_process = WebSocketProtocol.processData
    original_message = WebSocketProtocol.sendMessage
    STATE_OPEN = WebSocketProtocol.STATE_OPEN

    def processData(self):
        # autobahn's consumeData calls this while it returns True and the socket is
        # open (or closing: then the frame goes the long way, as it may be a close).
        span = _whole_binary_frame(self) if self.state == STATE_OPEN else None
        if span is None:
            return original_process(self)
        start, end = span
        data = self.data
        payload = unmask(data[start - 4 : start], data[start:end])
        self.data = data[end:]
        length = end - start
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self.message_is_binary = True
        self._onMessage(payload, True)
        return len(self.data) > 0

    def sendMessage(
        self,
        payload,
        isBinary=False,
        fragmentSize=None,
        sync=False,
        doNotCompress=False,
    ):
        length = len(payload)
        if (
            length > 0xFFFF
            or type(payload) is not bytes
            or type(isBinary) is not bool
            or fragmentSize is not None
            or sync
            or self.state != STATE_OPEN
            or self._perMessageCompress is not None
            or self.trackedTimings
            or self.logFrames
            or 0 < self.autoFragmentSize < length
            or 0 < self.maxMessagePayloadSize < length
            or self.maskServerFrames
            or not self.factory.isServer
        ):
            return original_message(
                self, payload, isBinary, fragmentSize, sync, doNotCompress
            )
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingOctetsAppLevel += length
        stats.outgoingOctetsWebSocketLevel += length
        stats.outgoingWebSocketFrames += 1
        opcode = 0x82 if isBinary else 0x81
        if length <= 125:
            header = bytes((opcode, length))
        else:
            header = bytes((opcode, 126, length >> 8, length & 0xFF))
        self.sendData(header + payload)
        return None

    def dataReceived(self, data):
        if _debug_enabled(self.log):
            return original_received(self, data)
        return self._dataReceived(data)

    def sendData(self, data, sync=False, chopsize=None):
        # autobahn's own plain path (no chopping, queueing or octet logging), unlogged.
        if (
            chopsize
            or sync
            or self.send_queue
            or self.state != STATE_OPEN
            or self.logOctets
            or _debug_enabled(self.log)
        ):
            return original_send(self, data, sync, chopsize)
        write_now(self.transport, data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)
        return None

    def handle_reply(self, message):
        # daphne's websocket.send on an open socket (serverSend without its debug
        # line): one of text or bytes, non-empty. Anything else goes daphne's way.
        if (
            message.get("type") == "websocket.send"
            and self.state == STATE_OPEN
            and not ws_protocol.logger.isEnabledFor(logging.DEBUG)
        ):
            text, data = message.get("text"), message.get("bytes")
            if text and not data:
                self.sendMessage(text.encode("utf8"), False)
                return
            if data and not text:
                self.sendMessage(data, True)
                return
        original_reply(self, message)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.dataReceived = dataReceived
    WebSocketProtocol.sendData = sendData
    WebSocketProtocol.processData = processData
    WebSocketProtocol.sendMessage = sendMessage
    WebSocketProtocol._fast_path = True


def install() -> None:
    """Install every shortcut once (each is a no-op when its library is missing).

    They change no behaviour, so on library versions they were not written for the
    unpatched paths stay, with a warning, instead of a refusal to start.
    """
    if untested := versions_untested(TESTED_VERSIONS):
        logger.warning("relay speedups off (untested %s)", ", ".join(untested))
        return
    install_session_fast_path()
    install_autobahn_fast_path()
