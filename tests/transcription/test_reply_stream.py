"""Replies streamed by sentence: the splitter, the streaming receiver client, the
demo receiver's streamed answer, and the parameters (docs/protocol.md §11)."""

import asyncio
import json
import time
import uuid

import pytest
from channels.layers import get_channel_layer

from tests.e2e.servers import free_port
from tests.transcription.voice_fakes import (
    StreamingHttpReceiver,
    StreamingTcpReceiver,
    TcpReceiver,
)
from transcription.engines import Capabilities
from transcription.streaming.protocol import ProtocolError, parse_params
from transcription.voice_loop.demo_receiver import DemoReceiver
from transcription.voice_loop.receiver import (
    ReceiverConfig,
    ReceiverError,
    receiver_stream,
)
from transcription.voice_loop.replies import session_group
from transcription.voice_loop.sentences import SentenceSplitter, split_sentences
from transcription.voice_loop.worker import deliver_streamed

CAPS = Capabilities(
    languages=("en-US",),
    encodings=("pcm",),
    min_sample_rate=8000,
    max_sample_rate=48000,
)
DOCUMENT = {
    "session_id": "s",
    "batch_id": "b",
    "language": "en-US",
    "stream": True,
    "transcriptions": [{"text": "hello", "timestamp": "t"}],
}


def test_sentences_of_a_whole_reply():
    assert split_sentences(
        'Hello there. How are you?  Fine! "Quoted." and the rest'
    ) == [
        "Hello there.",
        "How are you?",
        "Fine!",
        '"Quoted."',
        "and the rest",
    ]
    assert split_sentences("") == []
    assert split_sentences("3.5 percent") == ["3.5 percent"]


def test_a_line_end_completes_a_sentence_and_lines_join_with_a_space():
    splitter = SentenceSplitter()
    assert splitter.feed("First one.") == ["First one."]
    assert splitter.feed("Second one. Third") == ["Second one."]
    assert splitter.feed("part") == []
    assert splitter.finish() == "Third part"


async def _collect(config, document=DOCUMENT):
    got = []
    async for text in receiver_stream(config, document):
        got.append((text, time.monotonic()))
    return got


@pytest.mark.parametrize(
    "receiver_class", [StreamingTcpReceiver, StreamingHttpReceiver]
)
async def test_streamed_lines_arrive_as_they_are_written(receiver_class):
    receiver = await receiver_class(
        lambda document: [(0.05, "First."), (0.6, "Second."), (0.0, "Third.")]
    ).start()
    if receiver_class is StreamingHttpReceiver:
        config = ReceiverConfig(url=receiver.url, timeout=5)
    else:
        config = ReceiverConfig(host="127.0.0.1", port=receiver.port, timeout=5)
    try:
        got = await _collect(config)
    finally:
        await receiver.stop()
    assert [text for text, _ in got] == ["First.", "Second.", "Third."]
    # The first line was read before the second was written.
    assert got[0][1] < receiver.written[1][1]
    assert receiver.documents[0]["stream"] is True


async def test_a_receiver_that_ignores_the_flag_answers_one_line():
    receiver = await TcpReceiver().start()
    try:
        got = await _collect(ReceiverConfig(host="127.0.0.1", port=receiver.port))
    finally:
        await receiver.stop()
    assert [text for text, _ in got] == ["You said hello"]


async def test_a_streamed_reply_is_bounded_in_time():
    receiver = await StreamingTcpReceiver(
        lambda document: [(0.0, "First."), (5.0, "Too late.")]
    ).start()
    config = ReceiverConfig(host="127.0.0.1", port=receiver.port, timeout=0.5)
    got = []

    async def read():
        async for text in receiver_stream(config, DOCUMENT):
            got.append(text)

    try:
        with pytest.raises(ReceiverError, match="did not finish") as caught:
            await read()
    finally:
        await receiver.stop()
    assert got == ["First."]
    assert caught.value.retry


async def test_a_streamed_reply_is_bounded_in_size():
    receiver = await StreamingTcpReceiver(
        lambda document: [(0.0, "x" * 300), (0.0, "y" * 300)]
    ).start()
    config = ReceiverConfig(
        host="127.0.0.1", port=receiver.port, timeout=5, max_reply_bytes=500
    )
    try:
        with pytest.raises(ReceiverError, match="larger than the limit"):
            await _collect(config)
    finally:
        await receiver.stop()


async def test_demo_receiver_streams_one_sentence_a_line():
    receiver = DemoReceiver()
    server = await receiver.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ReceiverConfig(host="127.0.0.1", port=port, timeout=5)
    try:
        streamed = [t for t, _ in await _collect(config)]
        whole = [t for t, _ in await _collect(config, {**DOCUMENT, "stream": False})]
    finally:
        server.close()
        await server.wait_closed()
    assert streamed == ["Hello!", "I am the demo receiver.", "I heard you say: hello."]
    assert whole == [" ".join(streamed)]


def test_voice_parameters_parse(settings):
    params = parse_params(b"replyStream=true&bargeIn=true&silenceMs=800", CAPS)
    assert (params.reply_stream, params.barge_in, params.silence_ms) == (
        True,
        True,
        800,
    )
    default = parse_params(b"", CAPS)
    assert (default.reply_stream, default.barge_in, default.silence_ms) == (
        False,
        False,
        None,
    )


@pytest.mark.parametrize("value", ["499", "10001", "abc", "-1", "1e3", "0"])
def test_silence_ms_outside_the_bounds_is_refused(value, settings):
    settings.SILENCE_MS_MIN, settings.SILENCE_MS_MAX = 500, 10000
    with pytest.raises(ProtocolError, match="from 500 to 10000") as caught:
        parse_params(f"silenceMs={value}".encode(), CAPS)
    assert "silenceMs" in str(caught.value)


def test_silence_ms_bounds_come_from_the_settings(settings):
    settings.SILENCE_MS_MIN, settings.SILENCE_MS_MAX = 100, 200
    assert parse_params(b"silenceMs=150", CAPS).silence_ms == 150
    with pytest.raises(ProtocolError, match="from 100 to 200"):
        parse_params(b"silenceMs=500", CAPS)


def test_flags_take_true_or_false_only():
    with pytest.raises(ProtocolError, match="replyStream"):
        parse_params(b"replyStream=maybe", CAPS)
    with pytest.raises(ProtocolError, match="bargeIn"):
        parse_params(b"bargeIn=2", CAPS)


async def _pushed(session_id: str, count: int) -> list[dict]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(session_group(session_id), channel)
    return [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(count)]


async def test_a_reply_that_breaks_off_ends_with_a_closing_piece(settings):
    receiver = await StreamingTcpReceiver(
        lambda document: [(0.0, "One."), (3.0, "Two.")]
    ).start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port
    settings.RECEIVER_TIMEOUT = 0.5
    session_id = str(uuid.uuid4())
    listening = asyncio.ensure_future(_pushed(session_id, 2))
    await asyncio.sleep(0.05)
    try:
        outcome = await deliver_streamed({**DOCUMENT, "session_id": session_id})
    finally:
        await receiver.stop()
    first, closing = await listening
    assert (first["message"], first["seq"], first["last"]) == ("One.", 0, False)
    assert first["audio"]
    assert (closing["message"], closing["seq"], closing["last"]) == ("", 1, True)
    assert (outcome.reply, outcome.streamed, outcome.error) == ("One.", True, "")


async def test_a_receiver_that_is_down_is_retried_as_before(settings):
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", free_port()
    outcome = await deliver_streamed(DOCUMENT)
    assert outcome.retry
    assert "unreachable" in outcome.error
    assert not outcome.streamed


def test_a_resumable_sessions_piece_keeps_its_number_as_piece():
    from transcription.streaming.protocol import numbered

    piece = '{"type": "server_response", "message": "Hi.", "seq": 2, "last": false}'
    assert json.loads(numbered(piece, 7)) == {
        "type": "server_response",
        "message": "Hi.",
        "piece": 2,
        "last": False,
        "seq": 7,
    }
    assert json.loads(numbered('{"transcript": "x"}', 3)) == {
        "transcript": "x",
        "seq": 3,
    }
