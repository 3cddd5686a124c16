"""The pocketsphinx engine: the Festival fixtures decoded in worker processes."""

import asyncio
import os
import signal

import numpy as np
import pytest
import soxr

from tests.audio import chunks, read_pcm
from tests.helpers import receive_until_close
from tests.transcription.engine_helpers import WAIT, revoked_mid_stream, stream_all
from transcription.engines import EngineError, StreamParams, get_engine
from transcription.engines import pocketsphinx_worker as worker
from transcription.engines.pocketsphinx import PocketsphinxEngine
from transcription.engines.pool import OfflineStream


def finals(events) -> list[str]:
    return [event.text for event in events if not event.is_partial]


@pytest.fixture
def engine(settings) -> PocketsphinxEngine:
    """The process-wide pocketsphinx engine, with a pool of two decoding processes."""
    settings.TRANSCRIPTION_ENGINE = "pocketsphinx"
    settings.OFFLINE_DECODER_PROCESSES = 2
    return get_engine()


async def open_stream(engine: PocketsphinxEngine, rate: int = 16000) -> OfflineStream:
    return await engine.open(StreamParams(sample_rate=rate, session_id="test"))


async def transcribe(engine, name: str, chunk: int = 1024) -> list:
    audio, rate = read_pcm(name)
    return await stream_all(await open_stream(engine, rate), audio, chunk)


async def worker_stats(engine: PocketsphinxEngine) -> list[dict]:
    return [
        await asyncio.wrap_future(w.executor.submit(worker.stats))
        for w in engine.pool.workers
    ]


# --- through the pool ----------------------------------------------------------


async def test_hello_world_partials_then_final(engine):
    events = await transcribe(engine, "hello_world.wav")
    assert finals(events) == ["hello world"]
    final_at = next(i for i, e in enumerate(events) if not e.is_partial)
    partials = [e.text for e in events[:final_at]]
    assert len(partials) >= 2
    assert all(e.is_partial for e in events[:final_at])
    assert len(set(partials)) == len(partials)  # a partial only when its text changed
    final = events[final_at]
    assert 0 <= final.start < final.end <= 1.4  # seconds within the 1.37 s of audio
    assert all(e.start == final.start and e.end <= final.end for e in events)


async def test_two_utterances_give_two_finals_in_order(engine):
    events = await transcribe(engine, "two_utterances.wav")
    final_events = [e for e in events if not e.is_partial]
    texts = [e.text for e in final_events]
    assert len(texts) >= 2
    weather = next(i for i, t in enumerate(texts) if "weather" in t)
    lights = next(i for i, t in enumerate(texts) if "lights" in t)
    assert weather < lights
    # The 1.5 s pause lies between them.
    assert final_events[weather].end + 1 < final_events[lights].start


async def test_44k_stereo_is_resampled(engine):
    """The 44.1 kHz stereo fixture, downmixed here, declared as 44100 Hz."""
    events = await transcribe(engine, "two_utterances_44k_stereo.wav")
    texts = finals(events)
    assert len(texts) >= 2
    assert "weather is nice today" in texts[0]
    assert texts[-1].endswith("turn on the lights")
    assert events[-1].end == pytest.approx(5.4, abs=0.5)  # 16 kHz-equivalent seconds


async def test_two_sessions_decode_in_two_processes(engine):
    first, second = await open_stream(engine), await open_stream(engine)
    assert first.worker_pid != second.worker_pid
    assert os.getpid() not in (first.worker_pid, second.worker_pid)
    hello, _ = read_pcm("hello_world.wav")
    both, _ = read_pcm("two_utterances.wav")
    results = await asyncio.gather(stream_all(first, hello), stream_all(second, both))
    assert finals(results[0]) == ["hello world"]
    assert any("lights" in text for text in finals(results[1]))


async def test_aclose_mid_utterance_frees_the_session_in_its_worker(engine):
    audio, _ = read_pcm("hello_world.wav")
    stream = await open_stream(engine)
    before = {s["pid"]: s for s in await worker_stats(engine)}[stream.worker_pid]
    for piece in chunks(audio[:32000]):  # "hello" and half of "world"
        await stream.send_audio(piece)
    events = stream.events()
    first = await asyncio.wait_for(anext(events), WAIT)
    assert first.is_partial  # mid-utterance: the session holds a decoder now
    await events.aclose()
    during = {s["pid"]: s for s in await worker_stats(engine)}[stream.worker_pid]
    assert during["idle_decoders"] == before["idle_decoders"] - 1
    await stream.aclose()
    await stream.aclose()  # twice is fine
    assert [event async for event in stream.events()] == []
    after = {s["pid"]: s for s in await worker_stats(engine)}[stream.worker_pid]
    assert after == before | {"sessions": before["sessions"] - 1}


async def test_killed_worker_fails_its_session_then_a_new_one_works(engine):
    audio, _ = read_pcm("hello_world.wav")
    doomed = await open_stream(engine)
    os.kill(doomed.worker_pid, signal.SIGKILL)
    with pytest.raises(EngineError) as failure:
        await stream_all(doomed, audio)
    assert failure.value.close_code == 1011
    # One session per process: one of them lands where the killed process was.
    first, second = await open_stream(engine), await open_stream(engine)
    assert doomed.worker_pid not in (first.worker_pid, second.worker_pid)
    results = await asyncio.gather(stream_all(first, audio), stream_all(second, audio))
    assert [finals(events) for events in results] == [["hello world"]] * 2


async def test_end_without_audio_ends_without_events(engine):
    stream = await open_stream(engine)
    assert await stream_all(stream, b"") == []


# --- the worker's decoding, in this process --------------------------------------


def decode_here(audio: bytes, rate: int, chunk: int) -> list:
    worker.session_open("here", rate)
    try:
        events = [
            e for piece in chunks(audio, chunk) for e in worker.feed("here", piece)
        ]
        return events + worker.feed("here", b"", last=True)
    finally:
        worker.session_close("here")


@pytest.mark.parametrize("chunk", [1023, 4097])
def test_odd_chunk_sizes_decode_the_same(chunk):
    """Odd byte counts split samples: the remainder is carried to the next chunk."""
    audio, rate = read_pcm("hello_world.wav")
    audio = soxr.resample(np.frombuffer(audio, "<i2"), rate, 22050).tobytes()
    whole = decode_here(audio, 22050, len(audio))
    assert decode_here(audio, 22050, chunk) == whole
    assert [text for text, is_partial, *_ in whole if not is_partial] == ["hello world"]


def test_audio_cut_mid_word_is_flushed_as_a_final():
    audio, rate = read_pcm("hello_world.wav")
    events = decode_here(audio[: int(rate * 2 * 0.9)], rate, 1024)
    assert [text for text, is_partial, *_ in events if not is_partial] != []


# --- through the consumer ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_consumer_streams_partials_and_final(engine, connect, api_token):
    audio, _ = read_pcm("hello_world.wav")
    ws = await connect(token=api_token[1])
    for piece in chunks(audio):
        await ws.send_to(bytes_data=piece)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws, wait=WAIT)
    assert messages[-1] == {"transcript": "hello world"}
    assert len(messages) >= 3
    assert all(set(m) == {"partialTranscript"} for m in messages[:-1])
    assert close["code"] == 1000


@pytest.mark.django_db(transaction=True)
async def test_consumer_sends_a_finals_words_when_asked(engine, connect, api_token):
    audio, _ = read_pcm("two_utterances.wav")
    ws = await connect(
        token=api_token[1], detail="true", wordTimes="true", sendPartials="false"
    )
    for piece in chunks(audio, 8192):
        await ws.send_to(bytes_data=piece)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws, wait=WAIT)
    assert close["code"] == 1000
    assert len(messages) == 2
    for final in messages:
        said = [word["word"] for word in final["words"]]
        assert said == final["transcript"].split()
        assert all(
            final["startTime"] <= word["start"] < word["end"] <= final["endTime"]
            for word in final["words"]
        )
    assert messages[1]["words"][-1]["word"] == "lights"
    assert messages[1]["words"][-1]["end"] == pytest.approx(5.138, abs=0.15)


@pytest.mark.django_db(transaction=True)
async def test_consumer_closes_1008_when_the_token_is_revoked(
    engine, connect, api_token, settings
):
    settings.ACCESS_CHECK_SECONDS = 0.05
    ws = await connect(token=api_token[1])
    await revoked_mid_stream(ws, api_token[0], read_pcm("hello_world.wav")[0])
