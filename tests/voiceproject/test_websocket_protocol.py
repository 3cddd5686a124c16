"""websocket_protocol's close codes: the close frame carries the app's code and its
reason, cut to fit."""

import pytest
from daphne.ws_protocol import WebSocketProtocol

from voiceproject.server import websocket_protocol


class Socket:
    """What the patched handle_reply uses of daphne's protocol: its state and
    autobahn's sendCloseFrame."""

    STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING
    state = WebSocketProtocol.STATE_OPEN

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes | None]] = []

    def sendCloseFrame(self, code, reasonUtf8):  # autobahn's name
        self.sent.append((code, reasonUtf8))


def close(reason, code=1008) -> tuple[int, bytes | None]:
    websocket_protocol.install_close_codes()
    socket = Socket()
    message = {"type": "websocket.close", "code": code, "reason": reason}
    WebSocketProtocol.handle_reply(socket, message)
    [sent] = socket.sent
    return sent


@pytest.mark.parametrize(
    ("reason", "sent"),
    [
        (None, None),
        ("", None),
        ("bye", b"bye"),
        ("x" * 200, b"x" * 123),
        # Two-byte characters: 61 of them fit (122 bytes), the 62nd would be split.
        ("é" * 100, ("é" * 61).encode()),
        # A four-byte character straddling the limit is left out whole.
        ("a" * 121 + "😀", b"a" * 121),
    ],
)
def test_the_reason_is_utf8_cut_at_a_character_within_123_bytes(reason, sent):
    assert close(reason) == (1008, sent)


def test_no_code_means_a_normal_close():
    assert close("done", code=None) == (1000, b"done")


class Buffered:
    """Twisted's write buffer, as `pending_bytes` reads it."""

    def __init__(self, buffered: int, written: int = 0, waiting: int = 0) -> None:
        self.dataBuffer = b"x" * buffered
        self.offset = written
        self._tempDataLen = waiting
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class Wrapper:  # a TLS transport over the TCP one
    def __init__(self, transport) -> None:
        self.transport = transport


def test_pending_bytes_reads_twisted_buffer_through_tls():
    assert websocket_protocol.pending_bytes(Buffered(100, 30, 5)) == 75
    assert websocket_protocol.pending_bytes(Wrapper(Buffered(10))) == 10
    assert websocket_protocol.pending_bytes(object()) == 0


class Queue(list):
    def put_nowait(self, item):
        self.append(item)


@pytest.mark.parametrize(("buffered", "dropped"), [(1024, False), (1025, True)])
def test_over_max_outbound_bytes_the_connection_is_dropped_once(
    settings, buffered, dropped
):
    settings.MAX_OUTBOUND_BYTES = 1024
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.transport = Buffered(buffered)
    protocol.client_addr = ("127.0.0.1", 5000)
    protocol.application_queue = Queue()
    websocket_protocol._limit_outbound(protocol)
    websocket_protocol._limit_outbound(protocol)  # muted: once
    assert protocol.transport.aborted is dropped
    assert protocol.muted is dropped
    expected = {"type": "websocket.disconnect", "code": 1006, "outbound_overflow": 1025}
    assert protocol.application_queue == ([expected] if dropped else [])
