"""Redis, the channel layer, may fail: live sessions go on, the server recovers.

The test starts a redis-server of its own on a free port, so that it may kill it
mid-session and start it again (on the same port, empty: it keeps nothing).
"""

import asyncio
import contextlib
import json

import pytest
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import RedisServer, run_daphne
from tests.transcription.voice_fakes import TcpReceiver
from transcription.models import AudioSession, ReceiverBatch

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis():
    if not RedisServer.available():
        pytest.skip("needs redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="rita")
    return api_token_create(user=user, name="t")[1]


async def next_message(ws, seconds: float = 15) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), seconds))


async def say(ws, words: str) -> dict:
    """One final (WordsEngine: a frame is a final), then the reply to its batch."""
    await ws.send(words.encode())
    assert await next_message(ws, 5) == {"transcript": words}
    reply = await next_message(ws)
    assert reply["type"] == "server_response", reply
    return reply


async def test_a_redis_outage_loses_no_session_and_no_reply(redis, raw_token):
    receiver = await TcpReceiver().start()
    env = {
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "TTS_ENGINE": "tests.transcription.voice_fakes.BrokenSpeech",
        "SILENCE_SECONDS": "1",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "REDIS_URL": redis.url,
        "VOICE_WORKER_IN_PROCESS": "true",
    }
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        async with connect(url) as ws:
            assert (await say(ws, "before"))["message"] == "You said before"
            # channels_redis removes a received message from its backup queue in
            # a task of its own: let it run (killed under it, it logs a traceback;
            # the message would come again, and be dropped as said already).
            await asyncio.sleep(0.5)
            redis.kill()
            # The audio path needs no Redis: the final comes at once; its batch
            # is answered and stored, but cannot be pushed.
            await ws.send(b"during")
            assert await next_message(ws, 5) == {"transcript": "during"}
            await asyncio.sleep(3)
            assert len(receiver.documents) == 2
            redis.start()
            # Picked up from the database once the layer answers, exactly once.
            reply = await next_message(ws)
            assert reply["message"] == "You said during"
            during_batch = reply["batch_id"]
            # The group is joined again: the next reply is pushed as before.
            after = await say(ws, "after")
            assert after["message"] == "You said after"
            assert after["batch_id"] != during_batch
            await ws.send("END_OF_STREAM")
            with contextlib.suppress(Exception):
                while True:  # nothing more than the close (no second "during")
                    extra = await asyncio.wait_for(ws.recv(), 5)
                    pytest.fail(f"unexpected message {extra}")
            assert ws.close_code == 1000
        # A new session on the same server works at once, without a restart.
        async with connect(url) as ws:
            assert (await say(ws, "new"))["message"] == "You said new"
            await ws.send("END_OF_STREAM")
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000
        output = server.output()
    await receiver.stop()
    assert output.count("channel layer unavailable") == 1, output[-4000:]
    assert "channel layer is back" in output
    assert "Traceback" not in output, output[-4000:]
    sessions = [s async for s in AudioSession.objects.order_by("started_at")]
    assert [s.close_code for s in sessions] == [1000, 1000]
    finals = sessions[0].transcripts.order_by("seq").values_list("text", flat=True)
    texts = [text async for text in finals]
    assert texts == ["before", "during", "after"]
    assert (
        await ReceiverBatch.objects.filter(
            status=ReceiverBatch.Status.DELIVERED
        ).acount()
        == 4
    )


async def test_a_session_opened_while_redis_is_down_streams_and_gets_its_reply(
    redis, raw_token
):
    receiver = await TcpReceiver().start()
    env = {
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "TTS_ENGINE": "tests.transcription.voice_fakes.BrokenSpeech",
        "SILENCE_SECONDS": "30",  # END_OF_STREAM sends the batch
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "REDIS_URL": redis.url,
        "VOICE_WORKER_IN_PROCESS": "true",
    }
    with run_daphne(env) as server:
        redis.kill()
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            await ws.send(b"alone")
            assert await next_message(ws, 5) == {"transcript": "alone"}
            await ws.send("END_OF_STREAM")
            # No push can come: the session reads its reply from the database.
            reply = await next_message(ws)
            assert reply["type"] == "server_response"
            assert reply["message"] == "You said alone"
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000
    await receiver.stop()
    session = await AudioSession.objects.aget()
    assert session.close_code == 1000
