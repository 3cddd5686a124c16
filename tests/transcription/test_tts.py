"""Text-to-speech: espeak-ng to MP3 for real, Polly through a moto server."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.audio import mp3_seconds
from transcription.voice_loop import tts
from transcription.voice_loop.tts.espeak import voice_names
from transcription.voice_loop.tts.polly import (
    POLLY_MAX_CHARS,
    PollySpeech,
    split_text,
    voice_for,
)
from voiceproject.settings import _language_map

MOTO_SPEECH = b"\0" * 8


@pytest.fixture
def tts_engine(settings):
    def _use(name):
        settings.TTS_ENGINE = name
        return tts.get_tts()

    return _use


async def test_offline_speaks_mp3(tts_engine):
    engine = tts_engine("offline")
    assert engine.name == "offline"
    short = await engine.synthesize("Hello.", language="en-US")
    long = await engine.synthesize(
        "Hello there. The weather is nice today, please turn on the lights.",
        language="en-US",
    )
    assert 0.3 < mp3_seconds(short) < mp3_seconds(long) < 10


async def test_offline_unknown_language_falls_back_to_english(tts_engine):
    audio = await tts_engine("offline").synthesize("Bonjour", language="xx-YY")
    assert mp3_seconds(audio) > 0.2


@pytest.mark.parametrize("size", [1, 2999, 3000, 3001, 7000])
def test_split_text_respects_the_polly_limit(size):
    text = ("word. " * size)[:size]
    pieces = split_text(text)
    assert all(0 < len(piece) <= POLLY_MAX_CHARS for piece in pieces)
    assert " ".join(pieces).split() == text.split()


def test_split_text_cuts_after_a_sentence():
    text = "a" * 2000 + ". " + "b" * 1500
    assert split_text(text) == ["a" * 2000 + ".", "b" * 1500]


@pytest.mark.usefixtures("moto_polly")
async def test_polly_through_moto(tts_engine):
    engine = tts_engine("polly")
    assert engine.name == "polly"
    audio = await engine.synthesize("Hello from Polly.", language="en-US")
    # moto answers every request with these eight bytes for the speech (the real
    # service returns MP3): what it sent is what the engine returns, whole.
    assert audio == MOTO_SPEECH


@pytest.mark.usefixtures("moto_polly")
async def test_polly_splits_long_text(tts_engine):
    # moto refuses more than 3000 characters, as Polly does: success proves the split.
    one = await PollySpeech().synthesize("x" * 10, language="en-US")
    many = await PollySpeech().synthesize("word " * 1300, language="en-US")
    assert one == MOTO_SPEECH
    assert many == one * 3


async def test_polly_failure_is_a_tts_error(settings, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.AWS_POLLY_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(tts.TtsError, match="Polly failed"):
        await PollySpeech().synthesize("Hello", language="en-US")


_TEXT = st.text(alphabet=st.sampled_from("ab .!?\n\t"), max_size=400)


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.integers(min_value=1, max_value=60))
def test_split_text_pieces_fit_and_lose_nothing(text, limit):
    pieces = split_text(text, limit)
    assert all(0 < len(piece) <= limit for piece in pieces)
    assert all(piece == piece.strip() for piece in pieces)
    # Every character but whitespace is kept, in order (a word longer than the limit
    # has to be cut inside).
    assert "".join("".join(pieces).split()) == "".join(text.split())


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.integers(min_value=1, max_value=60))
def test_split_text_cuts_between_words_when_they_fit(text, limit):
    assume(all(len(word) <= limit for word in text.split()))
    assert " ".join(split_text(text, limit)).split() == text.split()


def test_polly_voice_per_language():
    voices = {"en-US": "Joanna:neural", "es-ES": "Lucia", "es-US": "Lupe:neural"}
    assert voice_for("en-US", voices, "Matthew") == ("Joanna", "neural")
    assert voice_for("es-es", voices, "Matthew") == ("Lucia", None)
    assert voice_for("es-MX", voices, "Matthew") == ("Lucia", None)  # same language
    assert voice_for("de-DE", voices, "Matthew") == ("Matthew", None)
    assert voice_for("en-US", {}, "Matthew") == ("Matthew", None)


@pytest.mark.usefixtures("moto_polly")
async def test_polly_asks_for_the_sessions_voice(settings):
    settings.POLLY_VOICES = {"es-ES": "Lucia:neural", "en-US": "Joanna"}
    engine = PollySpeech()
    asked = []
    engine.client().meta.events.register(
        "provide-client-params.polly.SynthesizeSpeech",
        lambda params, **kwargs: asked.append(dict(params)),
    )
    assert await engine.synthesize("Hola.", language="es-ES") == MOTO_SPEECH
    assert await engine.synthesize("Hi.", language="en-US") == MOTO_SPEECH
    assert [(a["VoiceId"], a.get("Engine")) for a in asked] == [
        ("Lucia", "neural"),
        ("Joanna", None),
    ]


def test_polly_voices_setting_reads_both_forms():
    assert _language_map("X", "en-US=Joanna:neural, es-ES=Lucia") == {
        "en-US": "Joanna:neural",
        "es-ES": "Lucia",
    }
    assert _language_map("X", '{"fr-FR": "Lea"}') == {"fr-FR": "Lea"}
    assert _language_map("X", "") == {}
    for bad in ("en-US", "=Joanna", '{"en-US": 3}', "{nope"):
        with pytest.raises(ImproperlyConfigured, match="X"):
            _language_map("X", bad)


def test_offline_voice_per_language(settings):
    assert voice_names("es-US")[0] == "es-419"
    assert voice_names("pt-BR")[0] == "pt-br"
    assert voice_names("fr-FR")[:2] == ["fr-fr", "fr"]
    settings.ESPEAK_VOICES = {"en-GB": "en-gb-x-rp"}
    assert voice_names("en-GB")[0] == "en-gb-x-rp"


async def test_offline_speaks_each_language_in_its_own_voice(tts_engine):
    engine = tts_engine("offline")
    text = "Hola, buenos dias."
    spain = await engine.synthesize(text, language="es-ES")
    latin = await engine.synthesize(text, language="es-US")
    english = await engine.synthesize(text, language="en-US")
    assert mp3_seconds(spain) > 0.3
    assert len({spain, latin, english}) == 3  # three voices, three recordings
