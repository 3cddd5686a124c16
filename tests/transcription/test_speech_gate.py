"""The speech gate: words in a text, Silero over an utterance, Whisper's own rule; and
the offline decoders asking it before they decode (no model loaded for those)."""

import subprocess
import sys

import numpy as np
import pytest

from tests.audio import fixture_pcm
from tests.e2e.servers import ROOT, server_env
from tests.noises import NOISES, mixed, noise, pcm
from tests.transcription.engine_helpers import stream_all
from transcription.engines import StreamParams, pocketsphinx_worker, whisper_worker
from transcription.engines.pocketsphinx import PocketsphinxEngine
from transcription.engines.speech_gate import (
    GateConfig,
    SpeechGate,
    WhisperThresholds,
    compression_ratio,
    has_words,
    model_path,
    whisper_heard_speech,
)
from transcription.engines.whisper import WhisperEngine

SECONDS = 15


@pytest.mark.parametrize(
    "text", ["", " ", ". . .", "...", "…", "-", " - ", "?!", "♪", "( )", "。"]
)
def test_text_without_a_letter_or_digit_has_no_words(text):
    assert not has_words(text)


@pytest.mark.parametrize(
    "text", ["hello world", "OK.", "42", "¿Qué?", "こんにちは", "Ελα", "a"]
)
def test_any_letter_or_digit_of_any_script_is_a_word(text):
    assert has_words(text)


def test_whispers_rule_needs_both_a_high_no_speech_probability_and_low_confidence():
    rule = WhisperThresholds(no_speech=0.6, log_prob=-1.0)
    assert not whisper_heard_speech(0.95, -1.7, rule)  # white noise, measured
    assert whisper_heard_speech(0.95, -0.5, rule)  # confident: speech
    assert whisper_heard_speech(0.2, -1.7, rule)  # unsure words, but words
    assert whisper_heard_speech(0.6, -1.0, rule)  # at the thresholds: kept
    assert not whisper_heard_speech(0.3, -1.7, WhisperThresholds(no_speech=0.2))


def test_a_loop_compresses_beyond_the_threshold_and_speech_does_not():
    assert compression_ratio("Thank you. " * 12) > WhisperThresholds().compression_ratio
    assert compression_ratio("The weather is nice today.") < 1.0
    assert compression_ratio("") == 0.0


def test_the_silero_model_ships_in_faster_whispers_wheel():
    assert model_path().stat().st_size > 1_000_000
    assert "site-packages" in str(model_path())


def test_min_speech_is_counted_in_32_ms_windows():
    assert GateConfig(min_speech_seconds=0.15).min_windows == 5
    assert GateConfig(min_speech_seconds=0.0).min_windows == 1


DEFAULT = GateConfig()


def _heard(audio: bytes, config: GateConfig = DEFAULT, piece: int = 960) -> bool:
    gate = SpeechGate(config)
    for start in range(0, len(audio), piece):
        gate.add(audio[start : start + piece])
        if gate.heard_speech():
            return True
    return False


@pytest.mark.parametrize("name", sorted(NOISES))
def test_silero_hears_no_speech_in_noise(name):
    assert not _heard(pcm(noise(name, SECONDS)))


@pytest.mark.parametrize("name", ["hello_world.wav", "two_utterances.wav"])
def test_silero_hears_the_fixtures_speech(name):
    assert _heard(fixture_pcm(name))


@pytest.mark.parametrize("name", ["white", "pink", "hum"])
def test_silero_hears_speech_in_moderate_noise(name):
    speech = fixture_pcm("hello_world.wav")
    assert _heard(mixed(speech, noise(name, 2), snr_db=10))


def test_a_stricter_gate_refuses_what_a_looser_one_takes():
    speech = fixture_pcm("hello_world.wav")
    assert _heard(speech, GateConfig(min_speech_seconds=0.3))
    assert not _heard(speech, GateConfig(min_speech_seconds=3.0))


def test_scored_in_any_pieces_the_gate_decides_at_the_same_window():
    speech = pcm(noise("white", 1)) + fixture_pcm("hello_world.wav")
    decided = set()
    for piece in (2, 1000, 1024, 4096, len(speech)):
        gate = SpeechGate(GateConfig())
        for start in range(0, len(speech), piece):
            gate.add(speech[start : start + piece])
            if gate.heard_speech():
                break
        decided.add(gate.windows_scored)
    [window] = decided
    assert window > 16000 / 512  # in the speech, after the second of noise


def test_a_disabled_gate_hears_speech_in_anything_without_scoring():
    gate = SpeechGate(GateConfig(enabled=False))
    gate.add(pcm(noise("white", 1)))
    assert gate.heard_speech()
    assert gate.windows_scored == 0


def test_reset_starts_a_new_utterance_unheard():
    gate = SpeechGate(GateConfig())
    gate.add(fixture_pcm("hello_world.wav"))
    assert gate.heard_speech()
    gate.reset()
    gate.add(pcm(noise("pink", 2)))
    assert not gate.heard_speech()


# --- the decoders ask it first ---------------------------------------------------


def _feed(session, audio: bytes, piece: int = 3200) -> list:
    events = []
    for start in range(0, len(audio), piece):
        events += session.feed(audio[start : start + piece], False)
    return events + session.feed(b"", True)


@pytest.fixture
def whisper_calls(monkeypatch):
    """whisper_worker without a model: `transcribe` records its calls."""
    calls: list[float] = []

    def transcribe(samples, language, *, final):
        calls.append(len(samples) / 16000)
        return "heard" if final else "heard so far"

    monkeypatch.setattr(whisper_worker, "transcribe", transcribe)
    monkeypatch.setattr(whisper_worker, "_gate", GateConfig())
    return calls


@pytest.mark.parametrize("name", sorted(NOISES))
def test_whisper_decodes_nothing_of_noise(whisper_calls, name):
    events = _feed(whisper_worker.Session(16000, "en-US"), pcm(noise(name, SECONDS)))
    assert events == []
    assert whisper_calls == []


def test_whisper_decodes_speech_after_noise_in_one_utterance(whisper_calls):
    # Steady noise keeps the endpointer in speech: the utterance is decoded, whole.
    background = noise("pink", 6)
    speech = mixed(fixture_pcm("hello_world.wav"), background[16000 * 3 :], 10)
    session = whisper_worker.Session(16000, "en-US")
    events = _feed(session, pcm(background[: 16000 * 3]) + speech)
    assert [text for text, partial, *_ in events if not partial] == ["heard"]
    assert whisper_calls  # partials too, once speech was heard
    assert min(whisper_calls) > 3.0  # none while only noise had come


def test_whisper_without_the_gate_decodes_noise(whisper_calls, monkeypatch):
    monkeypatch.setattr(whisper_worker, "_gate", GateConfig(enabled=False))
    events = _feed(whisper_worker.Session(16000, "en-US"), pcm(noise("white", 5)))
    assert whisper_calls
    assert events  # the fake decodes anything: the gate alone stood in between


@pytest.fixture(scope="module")
def pocketsphinx():
    pocketsphinx_worker._release_decoder(pocketsphinx_worker._take_decoder())
    return pocketsphinx_worker


def test_pocketsphinx_hears_no_word_in_pink_noise(pocketsphinx, monkeypatch):
    # Without the gate, it heard "thank" in this noise.
    monkeypatch.setattr(pocketsphinx, "_gate", GateConfig(enabled=False))
    ungated = _feed(pocketsphinx.Session(16000), pcm(noise("pink", SECONDS)))
    monkeypatch.setattr(pocketsphinx, "_gate", GateConfig())
    session = pocketsphinx.Session(16000)
    gated = _feed(session, pcm(noise("pink", SECONDS)))
    assert ungated  # it would say something
    assert gated == []
    assert len(session.unheard) == 0  # what was never speech was dropped


def test_pocketsphinx_keeps_at_most_a_few_seconds_unheard(pocketsphinx, monkeypatch):
    monkeypatch.setattr(pocketsphinx, "_gate", GateConfig())
    session = pocketsphinx.Session(16000)
    audio = pcm(noise("white", SECONDS))
    for start in range(0, len(audio), 3200):
        session.feed(audio[start : start + 3200], False)
    assert session.endpointer.in_speech
    assert 0 < len(session.unheard) <= pocketsphinx.MAX_UNHEARD_BYTES


def test_pocketsphinx_still_hears_the_fixture(pocketsphinx, monkeypatch):
    monkeypatch.setattr(pocketsphinx, "_gate", GateConfig())
    events = _feed(pocketsphinx.Session(16000), fixture_pcm("two_utterances.wav"))
    finals = [text for text, partial, *_ in events if not partial]
    assert len(finals) == 2
    assert "lights" in finals[1]
    assert np.mean([partial for _, partial, *_ in events]) > 0  # partials too


# --- the settings, and Whisper's own rule behind the gate --------------------------


def test_the_settings_reach_the_decoding_processes(settings):
    settings.SPEECH_GATE_THRESHOLD = 0.7
    settings.SPEECH_GATE_MIN_SPEECH_MS = 300
    settings.WHISPER_NO_SPEECH_THRESHOLD = 0.5
    settings.WHISPER_LOG_PROB_THRESHOLD = -0.8
    settings.WHISPER_COMPRESSION_RATIO_THRESHOLD = 2.0
    gate = {"enabled": True, "threshold": 0.7, "min_speech_seconds": 0.3}
    config = WhisperEngine(processes=1)._prepare()
    assert config["gate"] == gate
    assert WhisperThresholds(**config["thresholds"]) == WhisperThresholds(
        0.5, -0.8, 2.0
    )
    assert PocketsphinxEngine(processes=1).pool.initargs == (gate,)


async def test_without_the_gate_whispers_rule_and_the_word_rule_drop_noise(settings):
    settings.SPEECH_GATE = False
    engine = WhisperEngine(processes=1)
    try:
        for name in ("white", "hum"):
            stream = await engine.open(StreamParams(send_partials=False))
            assert await stream_all(stream, pcm(noise(name, 20)), 32000) == [], name
    finally:
        engine.pool.shutdown()


@pytest.mark.parametrize(
    ("name", "value"),
    [("SPEECH_GATE_THRESHOLD", "1.5"), ("SPEECH_GATE_MIN_SPEECH_MS", "-1")],
)
def test_a_gate_setting_out_of_bounds_stops_the_start_naming_it(name, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=server_env({name: value}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: SPEECH_GATE")
    assert "between 0 and 1" in last
