"""How the consumer handles engines that are slow, stuck, broken or refusing."""

import pytest
from asgiref.sync import sync_to_async

from tests.conftest import receive_until_close
from transcription import consumers
from transcription.models import AudioSession, SessionError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine(settings):
    def use(name: str):
        settings.TRANSCRIPTION_ENGINE = f"tests.transcription.fake_engines.{name}"

    return use


async def _end_and_collect(connect, raw):
    ws = await connect(token=raw, sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    await ws.send_to(text_data="END_OF_STREAM")
    return await receive_until_close(ws)


async def test_flush_bound_restarts_with_each_event(
    connect, api_token, engine, monkeypatch
):
    engine("SlowFlushEngine")
    monkeypatch.setattr(consumers, "FLUSH_TIMEOUT_SECONDS", 0.35)
    messages, close = await _end_and_collect(connect, api_token[1])
    assert messages == [{"transcript": f"final {n}"} for n in range(3)]
    assert close["code"] == 1000


async def test_engine_that_never_finishes_gets_1011(
    connect, api_token, engine, monkeypatch
):
    engine("StuckEngine")
    monkeypatch.setattr(consumers, "FLUSH_TIMEOUT_SECONDS", 0.3)
    messages, close = await _end_and_collect(connect, api_token[1])
    assert close["code"] == 1011
    assert "did not finish" in messages[-1]["error"]
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.status == "failed"


async def test_unexpected_engine_failure_hides_internals(connect, api_token, engine):
    engine("BrokenEngine")
    messages, close = await _end_and_collect(connect, api_token[1])
    assert close["code"] == 1011
    assert messages == [{"error": "Transcription failed: engine error."}]
    stored = await sync_to_async(SessionError.objects.get)()
    assert stored.close_code == 1011
    assert "secret internals" not in stored.message


async def test_engine_that_cannot_start_gets_its_close_code(connect, api_token, engine):
    engine("RefusingEngine")
    ws = await connect(token=api_token[1])
    messages, close = await receive_until_close(ws)
    assert messages == [{"error": "Speech service unavailable."}]
    assert close["code"] == 1011
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.status == "failed"
