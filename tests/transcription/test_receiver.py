"""The receiver client against real loopback servers (SPEC §4 framing)."""

import asyncio
import json
import socket

import pytest

from tests.transcription.voice_fakes import HttpReceiver, TcpReceiver
from transcription.receiver import (
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
