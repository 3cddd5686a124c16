"""The per-frame shortcuts change nothing that daphne, autobahn or Channels do."""

import itertools
from collections import deque
from types import SimpleNamespace

import pytest
import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.xormasker import create_xor_masker
from channels.sessions import (
    CookieMiddleware,
    InstanceSessionWrapper,
    SessionMiddleware,
)
from daphne.ws_protocol import WebSocketProtocol
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from voiceproject.server import relay_speedups, websocket_protocol


@pytest.fixture(autouse=True)
def installed():
    relay_speedups.install()
    assert InstanceSessionWrapper._fast_path
    assert WebSocketProtocol._fast_path


def open_protocol() -> WebSocketProtocol:
    protocol = WebSocketProtocol()
    protocol.state = WebSocketProtocol.STATE_OPEN
    protocol.send_queue = deque()
    protocol.logOctets = False
    protocol.trafficStats = TrafficStats()
    protocol.triggered = False
    protocol.transport = StringTransport()
    return protocol


def test_install_twice_wraps_once():
    send, data_received = InstanceSessionWrapper.send, WebSocketProtocol.dataReceived
    relay_speedups.install()
    assert InstanceSessionWrapper.send is send
    assert WebSocketProtocol.dataReceived is data_received


def test_send_data_writes_and_counts_like_autobahn():
    protocol = open_protocol()
    protocol.sendData(b"frame-bytes")
    assert protocol.transport.value() == b"frame-bytes"
    assert protocol.trafficStats.outgoingOctetsWireLevel == len(b"frame-bytes")


@pytest.mark.parametrize(
    "kwargs", [{"sync": True}, {"chopsize": 4}], ids=["sync", "chopped"]
)
def test_send_data_other_paths_queue_as_autobahn_does(kwargs, monkeypatch):
    protocol = open_protocol()
    triggered = []
    monkeypatch.setattr(protocol, "_trigger", lambda: triggered.append(True))
    protocol.sendData(b"0123456789", **kwargs)
    assert protocol.transport.value() == b""
    assert b"".join(chunk for chunk, _ in protocol.send_queue) == b"0123456789"
    assert triggered


def test_send_data_while_queue_is_not_empty_keeps_order(monkeypatch):
    protocol = open_protocol()
    monkeypatch.setattr(protocol, "_trigger", lambda: None)
    protocol.send_queue.append((b"first", False))
    protocol.sendData(b"second")
    assert protocol.transport.value() == b""
    assert [chunk for chunk, _ in protocol.send_queue] == [b"first", b"second"]


def test_data_received_goes_to_the_websocket_parser(monkeypatch):
    protocol = open_protocol()
    seen = []
    monkeypatch.setattr(protocol, "_dataReceived", seen.append)
    protocol.dataReceived(b"\x82\x80")
    assert seen == [b"\x82\x80"]


def test_debug_logging_is_detected():
    log = txaio.make_logger()
    log._set_log_level("info")
    assert not websocket_protocol._debug_enabled(log)
    log._set_log_level("debug")
    assert websocket_protocol._debug_enabled(log)


async def test_session_middleware_still_sets_the_cookie_on_http(settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

    async def app(scope, receive, send):
        scope["session"]["seen"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "websocket.send", "text": "hi"})

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": []}
    await CookieMiddleware(SessionMiddleware(app))(scope, None, send)
    start, passed = sent
    assert any(name == b"Set-Cookie" for name, _ in start["headers"])
    assert passed == {"type": "websocket.send", "text": "hi"}


class _Reactor:
    """What a Twisted TCP transport asks of its reactor, recorded."""

    def __init__(self):
        self.writers = set()

    def addReader(self, reader):
        pass

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)

    def removeReader(self, reader):
        pass


def _tcp_pair():
    import socket

    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reactor = _Reactor()
    port = SimpleNamespace(_realPortNumber=2)
    transport = tcp.Server(ours, Protocol(), ("peer", 1), port, 1, reactor)
    return transport, theirs, reactor


def _read_all(sock) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_write_now_sends_at_once_when_nothing_is_buffered():
    transport, peer, reactor = _tcp_pair()
    websocket_protocol.write_now(transport, b"hello")
    assert peer.recv(100) == b"hello"
    assert reactor.writers == set()  # Twisted's buffer and the event loop untouched


def test_write_now_buffers_the_rest_in_order_when_the_socket_is_full():
    transport, peer, reactor = _tcp_pair()
    sent = []
    for n in range(20000):  # far more than a socket pair's buffers hold
        chunk = f"{n:08d}".encode() * 16
        sent.append(chunk)
        websocket_protocol.write_now(transport, chunk)
    assert reactor.writers == {transport}  # the rest waits in Twisted's buffer
    received = _read_all(peer)  # the socket has room again, Twisted's buffer not empty
    websocket_protocol.write_now(transport, b"LAST")  # must not overtake what waits
    sent.append(b"LAST")
    while transport in reactor.writers:  # the event loop's writes, as it would
        transport.doWrite()
        received += _read_all(peer)
    assert received == b"".join(sent)


# --- autobahn's frame parser and writer, fast path against autobahn's own ----------

_AUTOBAHN = autobahn_protocol.WebSocketProtocol


class _Original(WebSocketProtocol):
    """daphne's protocol with autobahn's own parser and writer, as without the patch."""

    dataReceived = WebSocketServerProtocol.dataReceived
    processData = _AUTOBAHN.processData
    sendMessage = _AUTOBAHN.sendMessage
    sendData = _AUTOBAHN.sendData

    def handle_reply(self, message):
        websocket_protocol.ORIGINALS["handle_reply_without_fast_path"](self, message)


def _server_protocol(cls, *, limit: int = 4096):
    factory = WebSocketServerFactory()
    factory.log = txaio.make_logger()
    protocol = cls()
    protocol.log = txaio.make_logger()
    protocol.factory = factory
    protocol.transport = StringTransport()
    protocol.transport.registerProducer(protocol, True)  # as autobahn's connectionMade
    protocol._connectionMade()
    protocol.state = protocol.STATE_OPEN  # as the end of the opening handshake sets
    protocol.inside_message, protocol.current_frame = False, None
    protocol.websocket_version = 18
    protocol.maxFramePayloadSize = protocol.maxMessagePayloadSize = limit
    protocol.closeHandshakeTimeout = protocol.serverConnectionDropTimeout = 0
    protocol.client_addr = ("127.0.0.1", 1)
    protocol.messages = []
    protocol.onMessage = lambda payload, binary: protocol.messages.append(
        (payload, binary)
    )
    return protocol


def _observed(protocol) -> dict:
    return {
        "messages": protocol.messages,
        "written": protocol.transport.value(),
        "state": protocol.state,
        "failed": protocol.failedByMe,
        "too_big": protocol.wasMaxFramePayloadSizeExceeded
        or protocol.wasMaxMessagePayloadSizeExceeded,
        "left": protocol.data,
        "stats": vars(protocol.trafficStats),
    }


def _frame(
    opcode: int,
    payload: bytes,
    *,
    fin=True,
    rsv=0,
    mask=b"\x01\x02\x03\x04",
    length_form: str = "minimal",
) -> bytes:
    n = len(payload)
    masked = mask is not None
    if length_form == "minimal" and n <= 125:
        length = bytes((0x80 * masked | n,))
    elif length_form != "long" and n <= 0xFFFF:
        length = bytes((0x80 * masked | 126,)) + n.to_bytes(2, "big")
    else:
        length = bytes((0x80 * masked | 127,)) + n.to_bytes(8, "big")
    head = bytes((0x80 * fin | rsv << 4 | opcode,)) + length
    if not masked:
        return head + payload
    return head + mask + websocket_protocol.unmask(mask, payload)


_frames = st.builds(
    _frame,
    opcode=st.sampled_from([2, 2, 2, 1, 0, 9, 10, 3]),
    payload=st.one_of(
        st.binary(max_size=200),
        st.integers(0, 5000).map(
            lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256)
        ),
        st.sampled_from([b"END_OF_STREAM", "héllo".encode(), b"\xff\xfe"]),
    ),
    fin=st.sampled_from([True, True, True, False]),
    rsv=st.sampled_from([0, 0, 0, 0, 4]),
    mask=st.one_of(st.binary(min_size=4, max_size=4), st.just(None)),
    length_form=st.sampled_from(["minimal", "minimal", "medium", "long"]),
)


@given(
    frames=st.lists(_frames, max_size=8),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_frames_are_parsed_as_autobahn_parses_them(frames, cuts):
    """Any frames (text, control, fragmented, unmasked, oversized, non-minimal), cut
    anywhere: the same messages, closes, counters and leftovers as autobahn's parser."""
    stream = b"".join(frames)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    fast, original = _server_protocol(WebSocketProtocol), _server_protocol(_Original)
    for protocol in (fast, original):
        for a, b in itertools.pairwise(bounds):
            if protocol.state != protocol.STATE_CLOSED:
                protocol.dataReceived(stream[a:b])
    assert _observed(fast) == _observed(original)


def test_audio_frames_take_the_fast_path(monkeypatch):
    protocol = _server_protocol(WebSocketProtocol)
    monkeypatch.setattr(
        _AUTOBAHN, "onFrameBegin", lambda self: pytest.fail("autobahn's path")
    )
    audio = [bytes([i]) * 1024 for i in range(3)]
    protocol.dataReceived(
        b"".join(_frame(2, chunk, mask=b"\x9a\x07\x00\xff") for chunk in audio)
    )
    assert protocol.messages == [(chunk, True) for chunk in audio]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1024, 4096, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [True, False])
def test_messages_are_written_as_autobahn_writes_them(size, binary):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    fast, original = (
        _server_protocol(cls, limit=0) for cls in (WebSocketProtocol, _Original)
    )
    for protocol in (fast, original):
        protocol.sendMessage(payload, binary)
    assert fast.transport.value() == original.transport.value()
    assert vars(fast.trafficStats) == vars(original.trafficStats)


def test_a_message_over_the_clients_limit_is_still_sent():
    """MAX_FRAME_BYTES bounds the client's messages, not the server's (a spoken
    reply is often larger): autobahn would refuse it (PayloadExceededError)."""
    fast = _server_protocol(WebSocketProtocol, limit=10)
    fast.sendMessage(b"x" * 11, True)
    assert fast.transport.value() == b"\x82\x0b" + b"x" * 11
    assert fast.maxMessagePayloadSize == 10  # the client's limit stays


@given(mask=st.binary(min_size=4, max_size=4), payload=st.binary(max_size=3000))
def test_unmask_is_autobahns_masker(mask, payload):
    expected = (
        create_xor_masker(mask, len(payload)).process(payload) if payload else b""
    )
    assert websocket_protocol.unmask(mask, payload) == expected


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "hi ✓"},
        {"type": "websocket.send", "bytes": b"\x00\x01"},
        {"type": "websocket.send", "text": "a", "bytes": b"b"},
        {"type": "websocket.send", "text": "", "bytes": None},
        {"type": "websocket.send", "text": None, "bytes": b"only bytes"},
        {"type": "websocket.send"},
        {"type": "websocket.close", "code": 1000},
    ],
    ids=repr,
)
@pytest.mark.parametrize("state", ["open", "connecting"])
def test_replies_are_sent_as_daphne_sends_them(message, state):
    fast = _server_protocol(WebSocketProtocol)
    original = _server_protocol(_Original)
    outcomes = []
    for protocol in (fast, original):
        if state == "connecting":
            protocol.state = protocol.STATE_CONNECTING
        protocol.serverReject = lambda: None  # (the handshake is not simulated)
        try:
            protocol.handle_reply(dict(message))
            raised = None
        except ValueError as exc:
            raised = str(exc)
        outcomes.append((raised, protocol.transport.value(), protocol.state))
    assert outcomes[0] == outcomes[1]
