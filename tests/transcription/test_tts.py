"""Text-to-speech: espeak-ng to MP3 for real, Polly through a moto server."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.audio import mp3_seconds
from transcription.voice_loop import tts
from transcription.voice_loop.tts.polly import POLLY_MAX_CHARS, PollySpeech, split_text

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
