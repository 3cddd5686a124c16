"""Per-session latencies: the bookkeeping, and the figures a real session stores."""

import pytest
from prometheus_client import REGISTRY

from tests.helpers import receive_until_close
from tests.transcription.voice_fakes import TcpReceiver
from transcription.engines import TranscriptEvent
from transcription.models import AudioSession, WorkerHeartbeat
from transcription.runtime import worker_runner
from transcription.streaming.latency import SAMPLE_SECONDS, SessionLatency

RATE = 32000  # bytes per second: 16 kHz 16-bit mono


def final(end: float | None) -> TranscriptEvent:
    return TranscriptEvent(text="words", is_partial=False, start=0.0, end=end)


def test_real_time_stream():
    """Audio second t arrives at 100 + t; finals come 0.4 s and 0.9 s after theirs."""
    latency = SessionLatency(RATE)
    for frame in range(1, 201):  # 32 ms frames: 6.4 s
        latency.on_audio(frame * 1024, 100 + frame * 1024 / RATE)
    latency.on_event(100.5)
    latency.on_final(final(2.0), 102.4)
    latency.on_final(final(5.0), 105.9)

    summary = latency.summary()
    assert summary.first_partial_seconds == pytest.approx(0.468, abs=0.001)
    assert summary.final_latency_p50 == pytest.approx(0.65, abs=0.01)
    assert summary.final_latency_max == pytest.approx(0.9, abs=0.01)
    assert summary.reply_latency_p50 is None


def test_faster_than_real_time_measures_from_reception():
    """A 60 s file sent in 3 s: latency counts from when its end arrived, not from
    when it would have been spoken."""
    latency = SessionLatency(RATE)
    total = 60 * RATE
    for step in range(1, 301):  # every 10 ms, 0.2 s of audio
        latency.on_audio(step * total // 300, 10 + step * 0.01)
    latency.on_final(final(30.0), 11.8)  # 30 s of audio had arrived at 11.5
    latency.on_final(final(60.0), 13.5)  # everything had arrived at 13.0

    summary = latency.summary()
    assert summary.final_latency_max == pytest.approx(0.5, abs=0.02)
    assert summary.final_latency_p50 == pytest.approx(0.4, abs=0.02)
    assert len(latency.samples) <= 3 / SAMPLE_SECONDS  # sampled, and pruned


def test_no_times_or_no_byte_rate_give_no_final_latency():
    for rate, end in ((RATE, None), (None, 1.0)):
        latency = SessionLatency(rate)
        latency.on_audio(RATE, 1.0)
        latency.on_final(final(end), 2.0)
        assert latency.summary().final_latency_max is None
        assert latency.summary().first_partial_seconds == 1.0  # the final came first


def test_reply_latency_from_the_last_final_of_its_batch():
    latency = SessionLatency(RATE)
    latency.on_final(final(None), 10.0, "batch-1")
    latency.on_final(final(None), 11.0, "batch-1")
    latency.on_final(final(None), 12.0, "batch-2")
    latency.on_reply("batch-1", 14.0)
    latency.on_reply("batch-2", 13.0)
    latency.on_reply("unknown", 20.0)

    summary = latency.summary()
    assert summary.reply_latency_p50 == pytest.approx(2.0)
    assert summary.reply_latency_max == pytest.approx(3.0)


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db(transaction=True)
async def test_session_stores_first_partial_and_final_latency(
    echo_engine, connect, api_token
):
    first_partials = _sample("voiceproject_first_partial_seconds_count")
    ended = _sample("voiceproject_sessions_total", close_code="1000", engine="echo")
    ws = await connect(token=api_token[1])
    for _ in range(10):
        await ws.send_to(bytes_data=b"\0" * 3200)
    await ws.send_to(text_data="END_OF_STREAM")
    _messages, close = await receive_until_close(ws)
    assert close["code"] == 1000

    session = await AudioSession.objects.aget()
    assert session.first_partial_seconds is not None
    assert session.first_partial_seconds >= 0
    assert session.final_latency_p50 == session.final_latency_max >= 0
    assert session.reply_latency_p50 is None  # no receiver
    assert _sample("voiceproject_first_partial_seconds_count") == first_partials + 1
    assert (
        _sample("voiceproject_sessions_total", close_code="1000", engine="echo")
        == ended + 1
    )


@pytest.mark.django_db(transaction=True)
async def test_session_stores_reply_latency(settings, connect, api_token):
    settings.TRANSCRIPTION_ENGINE = "tests.transcription.voice_fakes.WordsEngine"
    settings.TTS_ENGINE = "tests.transcription.test_latency.SilentSpeech"
    settings.SILENCE_SECONDS = 60.0
    settings.VOICE_WORKER_IN_PROCESS = True
    receiver = await TcpReceiver().start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port
    replies = _sample("voiceproject_reply_latency_seconds_count")
    try:
        ws = await connect(token=api_token[1])
        await ws.send_to(bytes_data=b"what time is it")
        await ws.send_to(text_data="END_OF_STREAM")
        messages, close = await receive_until_close(ws)
    finally:
        await worker_runner.stop_in_process()
        await receiver.stop()
    assert messages[1]["type"] == "server_response"
    assert close["code"] == 1000

    session = await AudioSession.objects.aget()
    assert session.reply_latency_p50 == session.reply_latency_max > 0
    assert session.final_latency_p50 is None  # the words engine gives no times
    assert _sample("voiceproject_reply_latency_seconds_count") == replies + 1
    # The in-process worker recorded that it polls.
    assert await WorkerHeartbeat.objects.acount() == 1


class SilentSpeech:
    name = "silent"

    async def synthesize(self, text: str, *, language: str) -> bytes:
        return b"ID3-fake"
