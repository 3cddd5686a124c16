"""How the consumer handles engines that are slow, stuck, broken or refusing."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from tests.helpers import receive_until_close
from tests.transcription import fake_engines
from transcription.models import AudioSession, SessionError
from transcription.streaming import timers

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 10  # a bound on each wait, never an assertion about speed


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
    connect, api_token, engine, monkeypatch, loop_clock
):
    engine("SteppedFlushEngine")
    steps: asyncio.Queue[None] = asyncio.Queue()
    monkeypatch.setattr(fake_engines.SteppedFlushEngine, "steps", steps, raising=False)
    bound = 10.0
    monkeypatch.setattr(timers, "FLUSH_TIMEOUT_SECONDS", bound)
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    await ws.send_to(text_data="END_OF_STREAM")
    for n in range(3):
        # Past the bound since the flush began (from the second final on), never
        # since the last final: only a bound that restarts lets the finals through.
        loop_clock.advance(0.6 * bound)
        steps.put_nowait(None)
        assert await ws.receive_json_from(WAIT) == {"transcript": f"final {n}"}
    messages, close = await receive_until_close(ws)
    assert messages == []
    assert close["code"] == 1000


async def test_engine_that_never_finishes_gets_1011(
    connect, api_token, engine, monkeypatch
):
    engine("StuckEngine")
    monkeypatch.setattr(timers, "FLUSH_TIMEOUT_SECONDS", 0.3)
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
