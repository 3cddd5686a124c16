"""The voice loop end to end: daphne, a real receiver, spoken replies over WebSocket.

In the default run the batch worker runs inside daphne (in-memory channel layer). In
the `services` run (REDIS_URL, PostgreSQL) daphne does not run it: two
`manage.py run_worker` processes claim the batches and push the replies through Redis.
"""

import base64
import contextlib
import json
import sys

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import mp3_seconds
from tests.e2e.servers import free_port, run_daphne, run_process
from tests.helpers import eventually
from tests.transcription.voice_fakes import HttpReceiver, TcpReceiver
from transcription.models import ReceiverBatch, SessionError

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

WORDS_ENGINE = "tests.transcription.voice_fakes.WordsEngine"


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="carol")
    return api_token_create(user=user, name="e2e")[1]


@contextlib.contextmanager
def voice_server(receiver_env: dict[str, str]):
    """daphne with the voice loop; separate workers when the settings ask for them."""
    env = {
        "TRANSCRIPTION_ENGINE": WORDS_ENGINE,
        "TTS_ENGINE": "offline",
        "SILENCE_SECONDS": "60",
        "RECEIVER_RETRY_SECONDS": "0.1",
        "RECEIVER_TIMEOUT": "5",
        **receiver_env,
    }
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(run_daphne(env))
        if not settings.VOICE_WORKER_IN_PROCESS:
            for n in range(2):
                stack.enter_context(
                    run_process(
                        [sys.executable, "manage.py", "run_worker", "--id", f"w{n}"],
                        env,
                        name="worker",
                    )
                )
        yield server


async def _talk(server, token: str, *finals: str) -> tuple[list[dict], int]:
    url = f"{server.ws_url}/?token={token}"
    messages = []
    async with connect(url, open_timeout=10, close_timeout=40) as ws:
        for text in finals:
            await ws.send(text.encode())
        await ws.send("END_OF_STREAM")
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                messages.append(json.loads(message))
    return messages, ws.close_code


def _tcp_env(receiver) -> dict[str, str]:
    return {"RECEIVER_HOST": "127.0.0.1", "RECEIVER_PORT": str(receiver.port)}


async def test_spoken_reply_through_daphne_and_a_tcp_receiver(raw_token):
    receiver = await TcpReceiver().start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            messages, code = await _talk(
                server, raw_token, "hello there", "how are you"
            )
    finally:
        await receiver.stop()
    assert code == 1000
    assert messages[:2] == [
        {"transcript": "hello there"},
        {"transcript": "how are you"},
    ]
    [response] = messages[2:]
    assert response["type"] == "server_response"
    assert response["message"] == "You said hello there / how are you"
    assert mp3_seconds(base64.b64decode(response["audio"])) > 1.0
    [document] = receiver.documents
    assert [t["text"] for t in document["transcriptions"]] == [
        "hello there",
        "how are you",
    ]
    assert document["batch_id"] == response["batch_id"]
    batch = await sync_to_async(ReceiverBatch.objects.get)()
    assert (batch.status, batch.reply_text) == ("delivered", response["message"])


async def test_http_receiver_through_daphne(raw_token):
    receiver = await HttpReceiver().start()
    try:
        with voice_server({"RECEIVER_URL": receiver.url}) as server:
            messages, code = await _talk(server, raw_token, "over http")
    finally:
        await receiver.stop()
    assert code == 1000
    assert messages[-1]["message"] == "You said over http"
    assert mp3_seconds(base64.b64decode(messages[-1]["audio"])) > 0.5


async def test_receiver_down_then_back_through_daphne(raw_token):
    receiver = TcpReceiver()
    port = free_port()  # nothing listens there yet
    with voice_server({"RECEIVER_HOST": "127.0.0.1", "RECEIVER_PORT": str(port)}) as s:
        url = f"{s.ws_url}/?token={raw_token}"
        async with connect(url, open_timeout=10, close_timeout=40) as ws:
            await ws.send(b"anyone home")
            await ws.send("END_OF_STREAM")
            assert json.loads(await ws.recv()) == {"transcript": "anyone home"}
            await eventually(SessionError.objects.exists)  # first attempt failed
            await receiver.start(port)
            messages = []
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    messages.append(json.loads(message))
        await receiver.stop()
    assert ws.close_code == 1000
    assert [m["message"] for m in messages] == ["You said anyone home"]
    assert len(receiver.documents) == 1
    batch = await sync_to_async(ReceiverBatch.objects.get)()
    assert batch.status == "delivered"
    assert batch.attempts >= 2
