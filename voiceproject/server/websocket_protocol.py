"""Every change we make to daphne's WebSocket protocol.

That is `daphne.ws_protocol.WebSocketProtocol`, an autobahn `WebSocketServerProtocol`.

Four patches, each installed on its own, once:

- close codes (`install_close_codes()`): `handle_reply` for `websocket.close`;
- frame limits (`install_frame_limits()`, part of `flow_control`): `onConnect`,
  `_max_message_size_exceeded`;
- the outbound limit (`install_outbound_limit()`, part of `flow_control`): `sendData`;
- the fast path (`install_fast_path()`, part of `relay_speedups`): `handle_reply` for
  `websocket.send`, `processData`, `sendMessage`, `dataReceived`, `sendData`.

**Close codes.** Daphne hands `websocket.close` to autobahn's `sendClose`, which accepts
only 1000 and 3000-4999 (the limits browsers put on *client* code) and daphne drops the
reason; so 1008/1009/1011/1013, which seed 004 and docs/protocol.md §6 require, become a
1011 crash (django/daphne#374). We send the close frame through autobahn's lower-level
`sendCloseFrame`, which any RFC 6455 code may use.

**Frame limits** (docs/protocol.md §7). autobahn learns a frame's length from its header
and daphne's own limit (1 MiB) then drops the TCP connection: the client sees 1006 and
the consumer never hears of it. Here the limit is MAX_FRAME_BYTES, the payload of an
oversized frame is discarded as it arrives (never buffered), and the consumer gets
`{"type": "websocket.receive", "bytes": b"", "too_big": <length>}`.

**Outbound limit** (docs/protocol.md §7). Nothing in daphne bounds what waits to be
sent: autobahn answers every ping, daphne registers no producer, and Twisted's write
buffer grows with each pong to a client that sends pings and never reads. After every
write, a connection with more than MAX_OUTBOUND_BYTES in Twisted's buffer is dropped
(no close frame could reach a client that does not read), counted, logged, and its
consumer told (`{"type": "websocket.disconnect", "code": 1006, "outbound_overflow":
<bytes>}`) so that the session records why.

**Fast path** (docs/performance.md §3, `relay_speedups`). autobahn formats a debug line
for every read and write before its logger drops it: with its debug logging off,
`dataReceived` and the plain path of `sendData` run without it, and `sendData` writes
with `write_now`. autobahn parses every frame through a dozen calls: a whole, masked,
unfragmented binary frame within the size limits is taken in one step (`processData`),
and a message that fits one unmasked frame is written in one (`sendMessage`); every
other frame (text, control, fragmented, compressed, too big, malformed) takes autobahn's
own path.

**`handle_reply`** and **`sendData`** are each changed by two of the patches, composed
here and only here (`_install_handle_reply`, `_install_send_data`): a
`websocket.send` on an open socket takes the fast path when it is installed;
otherwise a `websocket.close` takes the close codes when they are installed;
everything else is daphne's own. Every write takes the fast path's `write_now` when
it can, then the outbound limit's check when it is installed. The order in which
the patches are installed does not matter.
"""

import logging
from typing import Any

from django.conf import settings
from twisted.internet import tcp

from transcription import metrics
from voiceproject.server.versions import require_versions, tested

logger = logging.getLogger(__name__)

CLOSE_CODES_TESTED = tested("daphne", "autobahn")
FRAME_LIMITS_TESTED = tested("daphne", "autobahn")
# Twisted: the write buffer's attributes (pending_bytes).
OUTBOUND_LIMIT_TESTED = tested("daphne", "autobahn", "twisted")
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 for the code

# Daphne's (and autobahn's) methods as they were before any patch here, for the
# patches that fall back to them and for the tests.
ORIGINALS: dict[str, Any] = {}


def _protocol_class() -> Any:
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - another ASGI server
        return None
    return WebSocketProtocol


# --- handle_reply: both changes, composed in one place ------------------------------


def _install_handle_reply(WebSocketProtocol) -> None:
    """Put the composed `handle_reply` in place of daphne's, once."""
    if "handle_reply" in ORIGINALS:
        return
    from autobahn.util import encode_truncate
    from daphne import ws_protocol

    daphne_reply = ORIGINALS["handle_reply"] = WebSocketProtocol.handle_reply
    daphne_logger = ws_protocol.logger
    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING
    # Which of the two changes are on: the class's markers, set by their installs.
    protocol = WebSocketProtocol
    protocol._close_codes_patched = protocol._fast_path = False

    def handle_reply_without_fast_path(self, message):
        """What `handle_reply` does for a message the fast path does not take."""
        if (
            protocol._close_codes_patched
            and message.get("type") == "websocket.close"
            and self.state != STATE_CONNECTING
        ):
            code = message.get("code") or 1000
            # UTF-8, cut to fit without splitting a character (autobahn's own rule).
            reason = encode_truncate(message.get("reason") or None, MAX_REASON_BYTES)
            self.sendCloseFrame(code=code, reasonUtf8=reason)
            return
        daphne_reply(self, message)

    def handle_reply(self, message):
        # The fast path: daphne's websocket.send on an open socket (serverSend without
        # its debug line), one of text or bytes, non-empty. Anything else goes on.
        if (
            protocol._fast_path
            and message.get("type") == "websocket.send"
            and self.state == STATE_OPEN
            and not daphne_logger.isEnabledFor(logging.DEBUG)
        ):
            text, data = message.get("text"), message.get("bytes")
            if text and not data:
                self.sendMessage(text.encode("utf8"), False)
                return
            if data and not text:
                self.sendMessage(data, True)
                return
        handle_reply_without_fast_path(self, message)

    ORIGINALS["handle_reply_without_fast_path"] = handle_reply_without_fast_path
    WebSocketProtocol.handle_reply = handle_reply


# --- close codes ---------------------------------------------------------------------


def install_close_codes() -> None:
    """Send the close codes and reasons that ASGI apps ask for, once (no-op without
    daphne); refuses untested versions."""
    WebSocketProtocol = _protocol_class()
    if WebSocketProtocol is None or getattr(
        WebSocketProtocol, "_close_codes_patched", False
    ):
        return
    require_versions(f"{__name__} (close codes)", CLOSE_CODES_TESTED)
    _install_handle_reply(WebSocketProtocol)
    WebSocketProtocol._close_codes_patched = True


# --- frame limits --------------------------------------------------------------------


def _limit_frames(original_on_connect):
    def onConnect(self, request):
        # Per connection (autobahn copied the factory's 1 MiB at connectionMade).
        self.maxFramePayloadSize = settings.MAX_FRAME_BYTES
        self.maxMessagePayloadSize = settings.MAX_FRAME_BYTES
        return original_on_connect(self, request)

    return onConnect


def _send_unlimited(original_send_message):
    """autobahn holds the messages it sends to maxMessagePayloadSize too: a spoken
    reply longer than MAX_FRAME_BYTES (its base64 MP3) crashed the session (1011).
    The limit is the client's: lifted while the server sends (synchronous)."""

    def sendMessage(self, *args, **kwargs):
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            return original_send_message(self, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = limit

    return sendMessage


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


def install_frame_limits() -> None:
    """MAX_FRAME_BYTES per frame, and a frame over it told to the consumer (no-op
    without daphne); refuses untested versions."""
    WebSocketProtocol = _protocol_class()
    if WebSocketProtocol is None or getattr(
        WebSocketProtocol, "_frame_limits_patched", False
    ):
        return
    require_versions("voiceproject.server.flow_control", FRAME_LIMITS_TESTED)
    original = ORIGINALS["onConnect"] = WebSocketProtocol.onConnect
    WebSocketProtocol.onConnect = _limit_frames(original)
    WebSocketProtocol.sendMessage = _send_unlimited(WebSocketProtocol.sendMessage)
    WebSocketProtocol._max_message_size_exceeded = _max_message_size_exceeded
    WebSocketProtocol._frame_limits_patched = True


# --- sendData: both changes, composed in one place ----------------------------------


def _install_send_data(WebSocketProtocol) -> None:
    """Put the composed `sendData` in place of autobahn's, once."""
    if "sendData" in ORIGINALS:
        return
    autobahn_send = ORIGINALS["sendData"] = WebSocketProtocol.sendData
    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    protocol = WebSocketProtocol
    protocol._outbound_limited = getattr(protocol, "_outbound_limited", False)

    def sendData(self, data, sync=False, chopsize=None):
        # The fast path: autobahn's own plain path (no chopping, queueing or octet
        # logging), unlogged, written with write_now.
        if (
            getattr(protocol, "_fast_path", False)
            and not chopsize
            and not sync
            and not self.send_queue
            and self.state == STATE_OPEN
            and not self.logOctets
            and not _debug_enabled(self.log)
        ):
            write_now(self.transport, data)
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            autobahn_send(self, data, sync, chopsize)
        if protocol._outbound_limited:
            _limit_outbound(self)

    WebSocketProtocol.sendData = sendData


# --- the outbound limit --------------------------------------------------------------


def pending_bytes(transport) -> int:
    """What waits in Twisted's write buffer of `transport` (through TLS to the TCP
    transport under it); 0 for transports without one (tests)."""
    while transport is not None and not hasattr(transport, "dataBuffer"):
        transport = getattr(transport, "transport", None)
    if transport is None:
        return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _limit_outbound(self) -> None:
    pending = pending_bytes(self.transport)
    limit = settings.MAX_OUTBOUND_BYTES
    if pending <= limit or self.muted:
        return
    metrics.OUTBOUND_OVERFLOWS.inc()
    logger.warning(
        "WebSocket from %s dropped: %d bytes wait to be sent, more than "
        "MAX_OUTBOUND_BYTES (%d): the client does not read",
        self.client_addr[0] if self.client_addr else "unknown",
        pending,
        limit,
    )
    queue = getattr(self, "application_queue", None)
    if queue is not None:
        queue.put_nowait(
            {"type": "websocket.disconnect", "code": 1006, "outbound_overflow": pending}
        )
    # daphne's own flag: its onClose then tells the application nothing more (it
    # was just told why).
    self.muted = True
    self.transport.abortConnection()


def install_outbound_limit() -> None:
    """At most MAX_OUTBOUND_BYTES waiting to be sent per connection (no-op without
    daphne); refuses untested versions."""
    WebSocketProtocol = _protocol_class()
    if WebSocketProtocol is None or getattr(
        WebSocketProtocol, "_outbound_limited", False
    ):
        return
    require_versions("voiceproject.server.flow_control", OUTBOUND_LIMIT_TESTED)
    _install_send_data(WebSocketProtocol)
    WebSocketProtocol._outbound_limited = True


# --- fast path -----------------------------------------------------------------------


def _debug_enabled(log) -> bool:
    # txaio swaps a disabled level's method for a function named _no_op.
    return getattr(log.debug, "__name__", "") != "_no_op"


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


def install_fast_path() -> None:
    """The per-frame shortcuts, once (no-op without daphne). Version policy:
    `relay_speedups.install()`, which calls this."""
    WebSocketProtocol = _protocol_class()
    if WebSocketProtocol is None or getattr(WebSocketProtocol, "_fast_path", False):
        return
    original_received = ORIGINALS["dataReceived"] = WebSocketProtocol.dataReceived
    original_process = ORIGINALS["processData"] = WebSocketProtocol.processData
    original_message = ORIGINALS["sendMessage"] = WebSocketProtocol.sendMessage
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

    _install_handle_reply(WebSocketProtocol)
    _install_send_data(WebSocketProtocol)
    WebSocketProtocol.dataReceived = dataReceived
    WebSocketProtocol.processData = processData
    WebSocketProtocol.sendMessage = sendMessage
    WebSocketProtocol._fast_path = True
