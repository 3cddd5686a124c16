"""The per-frame shortcuts change nothing that daphne, autobahn or Channels do."""

from collections import deque
from types import SimpleNamespace

import pytest
import txaio
from autobahn.websocket.protocol import TrafficStats
from channels.sessions import (
    CookieMiddleware,
    InstanceSessionWrapper,
    SessionMiddleware,
)
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.testing import StringTransport

from voiceproject import relay_speedups


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
    assert not relay_speedups._debug_enabled(log)
    log._set_log_level("debug")
    assert relay_speedups._debug_enabled(log)


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
    relay_speedups.write_now(transport, b"hello")
    assert peer.recv(100) == b"hello"
    assert reactor.writers == set()  # Twisted's buffer and the event loop untouched


def test_write_now_buffers_the_rest_in_order_when_the_socket_is_full():
    transport, peer, reactor = _tcp_pair()
    sent = []
    for n in range(20000):  # far more than a socket pair's buffers hold
        chunk = f"{n:08d}".encode() * 16
        sent.append(chunk)
        relay_speedups.write_now(transport, chunk)
    assert reactor.writers == {transport}  # the rest waits in Twisted's buffer
    received = _read_all(peer)  # the socket has room again, Twisted's buffer not empty
    relay_speedups.write_now(transport, b"LAST")  # must not overtake what waits
    sent.append(b"LAST")
    while transport in reactor.writers:  # the event loop's writes, as it would
        transport.doWrite()
        received += _read_all(peer)
    assert received == b"".join(sent)
