"""The voice loop's extensions end to end (docs/protocol.md §11): replies streamed
by sentence, streaming receivers, barge-in and a session's own silence, through a
real daphne, real receivers on loopback ports and real WebSocket clients."""

import asyncio
import base64
import contextlib
import json
import time

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.audio import mp3_seconds
from tests.e2e.test_voice_loop import _talk, _tcp_env, raw_token, voice_server
from tests.helpers import eventually
from tests.transcription.voice_fakes import (
    StreamingHttpReceiver,
    StreamingTcpReceiver,
    TcpReceiver,
)
from transcription.models import ReceiverBatch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

__all__ = ["raw_token"]  # the fixture, shared with test_voice_loop

THREE = "The first sentence. The second one! And a third?"


async def _talk_with(server, token, query, *finals):
    url = f"{server.ws_url}/?token={token}&{query}"
    return await _talk_url(url, *finals)


async def _talk_url(url, *finals):
    messages = []
    async with connect(url, open_timeout=10, close_timeout=40) as ws:
        for text in finals:
            await ws.send(text.encode())
        await ws.send("END_OF_STREAM")
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                messages.append(json.loads(message))
    return messages, ws.close_code


def _replies(messages):
    return [m for m in messages if m.get("type") == "server_response"]


async def test_a_reply_streamed_by_sentence_arrives_in_pieces(raw_token):
    receiver = await TcpReceiver(
        lambda document: json.dumps({"message": THREE}).encode() + b"\n"
    ).start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            messages, code = await _talk_with(
                server, raw_token, "replyStream=true", "tell me three things"
            )
    finally:
        await receiver.stop()
    assert code == 1000
    pieces = _replies(messages)
    assert [p["message"] for p in pieces] == [
        "The first sentence.",
        "The second one!",
        "And a third?",
    ]
    assert [p["seq"] for p in pieces] == [0, 1, 2]
    assert [p["last"] for p in pieces] == [False, False, True]
    assert len({p["batch_id"] for p in pieces}) == 1
    for piece in pieces:
        assert mp3_seconds(base64.b64decode(piece["audio"])) > 0.3
    # The receiver was told it may stream; the stored reply is whole.
    assert receiver.documents[0]["stream"] is True
    batch = await sync_to_async(ReceiverBatch.objects.get)()
    assert batch.reply_text == THREE
    assert batch.reply_sent == THREE
    assert batch.interrupted_at is None
    assert mp3_seconds(bytes(batch.reply_audio)) > mp3_seconds(
        base64.b64decode(pieces[0]["audio"])
    )


async def test_without_the_parameter_one_reply_as_before(raw_token):
    receiver = await StreamingTcpReceiver(
        lambda document: [(0.0, "One."), (0.0, "Two.")]
    ).start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            messages, code = await _talk(server, raw_token, "hello")
    finally:
        await receiver.stop()
    assert code == 1000
    [reply] = _replies(messages)
    assert set(reply) == {"type", "message", "audio", "batch_id"}
    assert reply["message"] == "One. Two."
    assert "stream" not in receiver.documents[0]


@pytest.mark.parametrize("transport", ["tcp", "http"])
async def test_a_streaming_receiver_is_heard_while_it_writes(raw_token, transport):
    """First sentence after 100 ms, the rest 2 s later: the first piece reaches
    the client before the receiver has written the rest."""
    script = [(0.1, "First sentence."), (2.0, "Second sentence. Third sentence.")]
    if transport == "tcp":
        receiver = await StreamingTcpReceiver(lambda document: script).start()
        env = _tcp_env(receiver)
    else:
        receiver = await StreamingHttpReceiver(lambda document: script).start()
        env = {"RECEIVER_URL": receiver.url}
    arrived = []
    try:
        with voice_server(env) as server:
            url = f"{server.ws_url}/?token={raw_token}&replyStream=true"
            async with connect(url, open_timeout=10, close_timeout=40) as ws:
                await ws.send(b"talk to me")
                await ws.send("END_OF_STREAM")
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        arrived.append((json.loads(message), time.monotonic()))
    finally:
        await receiver.stop()
    pieces = [(m, t) for m, t in arrived if m.get("type") == "server_response"]
    assert [m["message"] for m, _ in pieces] == [
        "First sentence.",
        "Second sentence.",
        "Third sentence.",
    ]
    assert [m["last"] for m, _ in pieces] == [False, False, True]
    rest_written_at = receiver.written[1][1]
    assert pieces[0][1] < rest_written_at < pieces[1][1]


async def test_barge_in_cuts_a_streamed_reply_short(raw_token):
    def script(document):
        heard = " ".join(t["text"] for t in document["transcriptions"])
        if "story" in heard:
            return [(0.05, "Once upon a time."), (1.5, "There was a king.")] + [
                (1.5, f"Chapter {n}.") for n in range(3)
            ]
        return [(0.0, "All right, I stop.")]

    receiver = await StreamingTcpReceiver(script).start()
    messages = []
    try:
        with voice_server(_tcp_env(receiver)) as server:
            url = (
                f"{server.ws_url}/?token={raw_token}"
                "&replyStream=true&bargeIn=true&silenceMs=500"
            )
            async with connect(url, open_timeout=10, close_timeout=40) as ws:
                await ws.send(b"tell me a long story")
                while True:  # until the story's first sentence is heard
                    message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    messages.append(message)
                    if message.get("type") == "server_response":
                        break
                await ws.send(b"~stop")  # a partial of a new utterance
                await ws.send(b"stop please")
                await ws.send("END_OF_STREAM")
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        messages.append(json.loads(raw))
            story = messages[1]["batch_id"]
            # Its worker stops and records it while the server runs.
            batch = await eventually(
                lambda: ReceiverBatch.objects.filter(
                    batch_id=story, status="delivered"
                ).first()
            )
    finally:
        await receiver.stop()
    assert messages[1]["message"] == "Once upon a time."
    cancel = {"type": "reply_cancelled", "batch_id": story}
    assert cancel in messages
    after = messages[messages.index(cancel) + 1 :]
    assert not [m for m in after if m.get("batch_id") == story]
    [answer] = [m for m in _replies(after)]
    assert answer["message"] == "All right, I stop."
    assert answer["batch_id"] != story
    assert batch.interrupted_at is not None
    assert batch.reply_sent == "Once upon a time."
    assert batch.reply_text.startswith("Once upon a time.")
    # The worker stopped reading: the story was not told to its end.
    assert "Chapter 2." not in [line for line, _ in receiver.written]


async def test_barge_in_cancels_a_reply_being_prepared(raw_token):
    receiver = await StreamingTcpReceiver(
        lambda document: (
            [(2.0, "A slow answer.")]
            if "first" in document["transcriptions"][0]["text"]
            else [(0.0, "Quick.")]
        )
    ).start()
    messages = []
    try:
        with voice_server(_tcp_env(receiver)) as server:
            url = f"{server.ws_url}/?token={raw_token}&bargeIn=true&silenceMs=500"
            async with connect(url, open_timeout=10, close_timeout=40) as ws:
                await ws.send(b"the first question")
                await eventually(lambda: receiver.documents)  # it is being prepared
                await ws.send(b"~actually")
                await ws.send(b"actually never mind")
                await ws.send("END_OF_STREAM")
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        messages.append(json.loads(raw))
            first = receiver.documents[0]["batch_id"]
            # Its worker finishes it (recorded, not sent) while the server runs.
            batch = await eventually(
                lambda: ReceiverBatch.objects.filter(
                    batch_id=first, status="delivered"
                ).first()
            )
    finally:
        await receiver.stop()
    assert {"type": "reply_cancelled", "batch_id": first} in messages
    assert [m["message"] for m in _replies(messages)] == ["Quick."]
    assert batch.interrupted_at is not None
    assert (batch.reply_text, batch.reply_sent) == ("A slow answer.", "")


async def test_without_barge_in_speaking_again_cancels_nothing(raw_token):
    receiver = await StreamingTcpReceiver(
        lambda document: [(1.0, "Answer to " + document["transcriptions"][0]["text"])]
    ).start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            url = f"{server.ws_url}/?token={raw_token}&silenceMs=500"
            async with connect(url, open_timeout=10, close_timeout=40) as ws:
                await ws.send(b"one")
                await eventually(lambda: receiver.documents)
                await ws.send(b"~two")
                await ws.send(b"two")
                await ws.send("END_OF_STREAM")
                messages = []
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        messages.append(json.loads(raw))
    finally:
        await receiver.stop()
    assert not [m for m in messages if m.get("type") == "reply_cancelled"]
    assert sorted(m["message"] for m in _replies(messages)) == [
        "Answer to one",
        "Answer to two",
    ]


async def test_silence_ms_sets_the_pause_and_its_bounds(raw_token):
    receiver = await TcpReceiver().start()
    try:
        with voice_server({**_tcp_env(receiver), "SILENCE_MS_MIN": "300"}) as server:
            # SILENCE_SECONDS is 60 here: only the session's own pause sends it.
            url = f"{server.ws_url}/?token={raw_token}&silenceMs=600"
            async with connect(url, open_timeout=10, close_timeout=10) as ws:
                await ws.send(b"quick one")
                assert json.loads(await ws.recv()) == {"transcript": "quick one"}
                reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
                assert reply["message"] == "You said quick one"
            for bad in ("299", "10001", "soon"):
                url = f"{server.ws_url}/?token={raw_token}&silenceMs={bad}"
                async with connect(url, open_timeout=10, close_timeout=10) as ws:
                    error = json.loads(await ws.recv())
                    with contextlib.suppress(ConnectionClosed):
                        await ws.recv()
                assert ws.close_code == 1008
                assert "silenceMs" in error["error"]
                assert "from 300 to 10000" in error["error"]
    finally:
        await receiver.stop()


async def test_a_long_one_piece_reply_larger_than_a_client_frame(raw_token):
    """A spoken reply's message may be larger than MAX_FRAME_BYTES (a limit on the
    client's frames): it is sent, not a 1011."""
    long = " ".join(f"This is sentence number {n} of a long answer." for n in range(8))
    receiver = await TcpReceiver(
        lambda document: json.dumps({"message": long}).encode() + b"\n"
    ).start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            url = f"{server.ws_url}/?token={raw_token}"
            async with connect(url, open_timeout=10, close_timeout=40) as ws:
                await ws.send(b"tell me everything")
                await ws.send("END_OF_STREAM")
                raw = [message async for message in ws]
    finally:
        await receiver.stop()
    assert ws.close_code == 1000
    [reply] = [json.loads(m) for m in raw if "server_response" in m]
    assert reply["message"] == long
    assert len(raw[-1]) > 65536
