"""The receiver client against real loopback servers (docs/protocol.md §10 framing)."""

import asyncio
import base64
import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transcription.voice_fakes import HttpReceiver, TcpReceiver
from transcription.voice_loop.receiver import (
    ReceiverConfig,
    ReceiverError,
    receiver_exchange,
    reply_text,
)

DOCUMENT = {
    "session_id": "s",
    "batch_id": "b",
    "language": "en-US",
    "transcriptions": [{"text": "héllo wörld", "timestamp": "2026-01-01T00:00:00Z"}],
}


@pytest.fixture
async def tcp():
    receivers = []

    async def _start(reply):
        receiver = await TcpReceiver(reply).start()
        receivers.append(receiver)
        return ReceiverConfig(host="127.0.0.1", port=receiver.port, timeout=2)

    yield _start
    for receiver in receivers:
        await receiver.stop()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"message": "hi there"}\n', "hi there"),
        (b'{"message": "hi there"}', "hi there"),  # ended by EOF
        ("plain text réponse\n".encode(), "plain text réponse"),
        (b"first line\nsecond line\n", "first line"),
        (b'{"answer": 1}', '{"answer": 1}'),  # a JSON object without message
        (b"[1, 2]", "[1, 2]"),
        (b"", ""),
        (b"\n", ""),
        (b'{"message": ""}\n', ""),
        (b'{"message": null}\n', ""),
    ],
)
async def test_tcp_reply_framing(tcp, raw, expected):
    config = await tcp(lambda document: raw)
    assert await receiver_exchange(config, DOCUMENT) == expected


async def test_tcp_sends_one_utf8_json_line_and_half_closes(tcp):
    seen = []

    def reply(document):
        seen.append(document)
        return b"ok"

    config = await tcp(reply)  # TcpReceiver reads to EOF: no half-close, no reply
    assert await receiver_exchange(config, DOCUMENT) == "ok"
    assert seen == [DOCUMENT]


async def test_oversized_reply_is_an_error_not_retried(tcp):
    config = await tcp(lambda document: b"x" * 5000 + b"\n")
    small = ReceiverConfig(host=config.host, port=config.port, max_reply_bytes=4096)
    with pytest.raises(ReceiverError, match="larger than the limit of 4096") as info:
        await receiver_exchange(small, DOCUMENT)
    assert info.value.retry is False


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"\xff\xfe bad", "not valid UTF-8"), (b'{"message": 42}', "non-text message")],
)
async def test_garbage_reply_is_an_error(tcp, raw, words):
    config = await tcp(lambda document: raw)
    with pytest.raises(ReceiverError, match=words) as info:
        await receiver_exchange(config, DOCUMENT)
    assert info.value.retry is False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_refused_connection_is_a_retryable_error():
    config = ReceiverConfig(host="127.0.0.1", port=_free_port(), timeout=2)
    with pytest.raises(ReceiverError, match="unreachable") as info:
        await receiver_exchange(config, DOCUMENT)
    assert info.value.retry is True


@pytest.mark.parametrize("transport", ["tcp", "http"])
async def test_silent_receiver_times_out(transport):
    release = asyncio.Event()

    async def hold(reader, writer):
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ReceiverConfig(host="127.0.0.1", port=port, timeout=0.2)
    if transport == "http":
        config = ReceiverConfig(url=f"http://127.0.0.1:{port}/", timeout=0.2)
    try:
        with pytest.raises(ReceiverError, match=r"did not answer within 0\.2") as info:
            await receiver_exchange(config, DOCUMENT)
        assert info.value.retry is True
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_http_receiver_posts_json():
    receiver = await HttpReceiver(lambda d: b'{"message": "from http"}').start()
    try:
        config = ReceiverConfig(url=receiver.url, timeout=2)
        assert await receiver_exchange(config, DOCUMENT) == "from http"
        assert receiver.documents == [DOCUMENT]
    finally:
        await receiver.stop()


@pytest.mark.parametrize(("status", "retry"), [(503, True), (400, False)])
async def test_http_error_status(status, retry):
    receiver = await HttpReceiver(lambda d: b"nope", status=status).start()
    try:
        config = ReceiverConfig(url=receiver.url, timeout=2)
        with pytest.raises(ReceiverError, match=f"HTTP {status}") as info:
            await receiver_exchange(config, DOCUMENT)
        assert info.value.retry is retry
    finally:
        await receiver.stop()


async def test_http_oversized_reply():
    receiver = await HttpReceiver(lambda d: b"y" * 300).start()
    try:
        config = ReceiverConfig(url=receiver.url, timeout=2, max_reply_bytes=100)
        with pytest.raises(ReceiverError, match="larger than the limit"):
            await receiver_exchange(config, DOCUMENT)
    finally:
        await receiver.stop()


async def test_http_refused():
    config = ReceiverConfig(url=f"http://127.0.0.1:{_free_port()}/", timeout=2)
    with pytest.raises(ReceiverError, match="unreachable") as info:
        await receiver_exchange(config, DOCUMENT)
    assert info.value.retry is True


def test_reply_text_keeps_json_that_is_not_a_message_object():
    assert reply_text(json.dumps({"msg": "x"}).encode()) == '{"msg": "x"}'


class ConnectionCounter:
    """A loopback server that only counts the connections it gets."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._count, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/elsewhere"

    async def _count(self, reader, writer) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_http_redirect_is_an_error_and_never_followed(status):
    elsewhere = ConnectionCounter()
    target = await elsewhere.start()
    receiver = await HttpReceiver(
        lambda d: b"moved", status=status, headers={"Location": target}
    ).start()
    try:
        config = ReceiverConfig(url=receiver.url, timeout=2)
        with pytest.raises(ReceiverError, match=f"HTTP {status} \\(a redirect") as info:
            await receiver_exchange(config, DOCUMENT)
        assert info.value.retry is True  # counted towards RECEIVER_MAX_ATTEMPTS
        assert receiver.documents == [DOCUMENT]
        assert elsewhere.connections == 0
    finally:
        await receiver.stop()
        await elsewhere.stop()


async def test_http_credentials_go_in_a_header_and_never_in_a_message():
    receiver = await HttpReceiver(lambda d: b"busy", status=503).start()
    port = receiver.port
    url = f"http://alice:s3cret%21@127.0.0.1:{port}/reply?token=abc123#frag"
    try:
        with pytest.raises(ReceiverError) as info:
            await receiver_exchange(ReceiverConfig(url=url, timeout=2), DOCUMENT)
    finally:
        await receiver.stop()
    expected = "basic " + base64.b64encode(b"alice:s3cret!").decode().lower()
    assert receiver.requests[0]["authorization"] == expected  # lowercased by the fake
    assert info.value.message == (
        f"Receiver at http://127.0.0.1:{port}/reply answered HTTP 503."
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:s3cret@127.0.0.1:{port}/reply?token=abc123",  # refused
        "ftp://alice:s3cret@127.0.0.1:{port}/reply?token=abc123",  # bad scheme
        "http://alice:s3cret@127.0.0.1:notaport/reply?token=abc123",  # bad port
    ],
)
async def test_receiver_errors_never_quote_credentials_or_query(url):
    config = ReceiverConfig(url=url.format(port=_free_port()), timeout=2)
    with pytest.raises(ReceiverError) as info:
        await receiver_exchange(config, DOCUMENT)
    for secret in ("alice", "s3cret", "token", "abc123"):
        assert secret not in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"message":' * 100_000,
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_deeply_nested_json_is_text_as_it_stands(raw):
    assert reply_text(raw) == raw.decode()


async def test_a_deeply_nested_reply_is_spoken_as_text(tcp):
    raw = b'{"message":' * 5_000  # deeper than the recursion limit, under 64 KiB
    config = await tcp(lambda document: raw + b"\n")
    assert await receiver_exchange(config, DOCUMENT) == raw.decode()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["message", "m", "x"]), inner)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_reply_text_of_any_bytes_is_text_or_a_receiver_error(raw):
    try:
        text = reply_text(raw)
    except ReceiverError as exc:
        text, retry = None, exc.retry
        assert retry is False  # a reply that is not text: trying again cannot help
    assert text is None or isinstance(text, str)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.dictionaries(st.text(max_size=5), st.integers()))
def test_a_message_object_round_trips(message, extra):
    document = {**extra, "message": message}
    assert reply_text(json.dumps(document).encode()) == message.strip()


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.text(max_size=5).filter(lambda k: k != "message"), inner
            )
        ),
        max_leaves=20,
    ).filter(lambda value: not (isinstance(value, dict) and "message" in value)),
    st.sampled_from(["", " ", "\n", "\t "]),
)
def test_anything_but_a_message_object_is_its_stripped_text(value, padding):
    text = json.dumps(value, ensure_ascii=False)
    assert reply_text((padding + text + padding).encode()) == text.strip()
