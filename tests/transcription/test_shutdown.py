"""A server process's orderly stop: sessions drained, the batch worker released."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from tests.helpers import eventually, receive_until_close, until
from tests.transcription.voice_fakes import TcpReceiver
from transcription import services
from transcription.engines import TranscriptEvent
from transcription.models import AudioSession, ReceiverBatch, SessionError
from transcription.runtime import shutdown
from transcription.streaming.session import State
from transcription.voice_loop.worker import BatchWorker

pytestmark = pytest.mark.django_db(transaction=True)

GOING_AWAY = {
    "error": "The server is going away: it is shutting down. Reconnect to continue."
}


@pytest.fixture(autouse=True)
def _not_draining(monkeypatch):
    monkeypatch.setattr(shutdown, "_draining", False)


@pytest.fixture
def engine(settings):
    def use(name: str):
        settings.TRANSCRIPTION_ENGINE = f"tests.transcription.fake_engines.{name}"

    return use


async def _streaming() -> None:
    """Until the one session has started (drained before that, it is refused)."""
    await until(lambda: [c.state for c in shutdown._sessions] == [State.STREAMING])


async def _errors() -> list[tuple[str, int | None]]:
    return await sync_to_async(list)(
        SessionError.objects.values_list("kind", "close_code")
    )


async def test_a_draining_session_sends_what_its_engine_heard_then_1001(
    connect, api_token, engine
):
    engine("SlowFlushEngine")  # three finals, 0.2 s apart, once the audio ends
    ws = await connect(token=api_token[1], sendPartials="false")
    await _streaming()
    await ws.send_to(bytes_data=b"\0" * 1024)
    await shutdown.drain(5)
    messages, close = await receive_until_close(ws)
    assert messages == [
        {"transcript": "final 0"},
        {"transcript": "final 1"},
        {"transcript": "final 2"},
        GOING_AWAY,
    ]
    assert close["code"] == 1001
    session = await sync_to_async(AudioSession.objects.get)()
    assert (session.status, session.close_code) == ("completed", 1001)
    assert session.close_reason == GOING_AWAY["error"]
    assert await _errors() == [("shutdown", 1001)]


async def test_an_engine_that_does_not_finish_is_cut_at_the_deadline(
    connect, api_token, engine
):
    engine("StuckEngine")
    ws = await connect(token=api_token[1])
    await _streaming()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shutdown.drain(0.5)
    assert loop.time() - started < 3
    messages, close = await receive_until_close(ws)
    assert (messages, close["code"]) == ([GOING_AWAY], 1001)
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.status == "completed"


async def test_new_sessions_are_refused_with_1013_while_draining(
    connect, api_token, echo_engine
):
    await shutdown.drain(1)
    ws = await connect(token=api_token[1])
    messages, close = await receive_until_close(ws)
    assert messages == [{"error": "The server is shutting down: try again later."}]
    assert close["code"] == 1013
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.status == "rejected"
    assert await _errors() == [("shutdown", 1013)]


# --- the batch worker ------------------------------------------------------------


class SilentReceiver:
    """Takes the request and never answers (a delivery that cannot finish)."""

    async def start(self):
        self.requests = 0
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader, writer):
        self.requests += 1
        await asyncio.sleep(3600)

    async def stop(self):
        self.server.close()


def _due_batch() -> ReceiverBatch:
    session = services.session_start(
        user=None, token=None, auth_method="", engine="test", params=None
    )
    transcript = services.transcript_add_final(
        session_id=session.pk,
        seq=1,
        event=TranscriptEvent(text="hello", is_partial=False),
        audio_bytes=0,
        bytes_per_second=None,
        silence_seconds=0,
    )
    return transcript.batch


@pytest.mark.services
async def test_a_stopping_worker_releases_what_it_cannot_finish(settings):
    receiver = await SilentReceiver().start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port
    settings.RECEIVER_TIMEOUT = 60
    batch = await sync_to_async(_due_batch)()
    worker = BatchWorker("w-stop")
    run = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: receiver.requests == 1)
        worker.stop(grace=0.2)
        await asyncio.wait_for(run, 5)
    finally:
        run.cancel()
        await receiver.stop()
    await sync_to_async(batch.refresh_from_db)()
    assert (batch.status, batch.attempts, batch.claimed_by) == ("pending", 0, "")
    assert batch.claimed_until is None
    assert await _errors() == []  # not a failed attempt


@pytest.mark.services
async def test_a_stopping_worker_finishes_deliveries_within_its_grace(settings):
    settings.TTS_ENGINE = "tests.transcription.voice_fakes.BrokenSpeech"
    receiver = await TcpReceiver().start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port
    batch = await sync_to_async(_due_batch)()
    worker = BatchWorker("w-finish")
    await worker.claim_due()  # claimed and under way
    worker.stop(grace=10)
    await asyncio.wait_for(worker.run(), 10)
    await receiver.stop()
    await sync_to_async(batch.refresh_from_db)()
    assert (batch.status, batch.attempts) == ("delivered", 1)
