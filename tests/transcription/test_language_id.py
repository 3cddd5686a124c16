"""language=auto: the mapping of Whisper's codes, the rule of when a guess is taken,
the parameter and the message, and the worker holding speech until it knows.

The worker test at the end replaces only Whisper itself (identify, transcribe) by
fakes, so that the rule can be driven to its low-probability branch; the real model
is exercised by test_whisper_multilingual.py and tests/e2e/test_languages.py.
"""

import json

import numpy as np
import pytest

from tests.transcription.fake_engines import CAPS
from tests.transcription.test_whisper_multilingual import _espeak_pcm
from transcription.engines import Capabilities, LanguageIdentified, whisper_worker
from transcription.engines import language_id as lid
from transcription.engines.aws_transcribe import AwsTranscribeEngine
from transcription.engines.endpointing import ONSET
from transcription.engines.whisper_model import identified_language
from transcription.models import AudioSession
from transcription.streaming import protocol
from transcription.streaming.protocol import ProtocolError, parse_params

AUTO_CAPS = Capabilities(
    languages=("en-US", "es-ES", "sv-SE"),
    encodings=("pcm",),
    min_sample_rate=8000,
    max_sample_rate=48000,
    identifies_language=True,
)


def _fed(session, data: bytes, **kwargs) -> list:
    """What a feed gives, without the onsets (SpeechStarted: the pool's to keep)."""
    return [
        event
        for event in session.feed_events(data, **kwargs)
        if isinstance(event, LanguageIdentified) or event[:2] != (ONSET, True)
    ]


@pytest.mark.parametrize(
    ("whisper", "client"),
    [
        ("en", "en-US"),
        ("sv", "sv-SE"),
        ("es", "es-ES"),  # not es-US, the table's first Spanish
        ("pt", "pt-BR"),
        ("zh", "zh-CN"),
        ("no", "no-NO"),
        ("ja", "ja-JP"),
        ("la", ""),  # Whisper knows Latin; no client code names it
        ("nn", ""),
        ("haw", ""),
    ],
)
def test_whisper_codes_map_to_the_clients_codes(whisper, client):
    assert identified_language(whisper) == client


def test_the_best_guess_is_the_most_probable_language_the_server_names():
    assert lid.best_supported([("la", 0.6), ("es", 0.3), ("en", 0.1)]) == (
        LanguageIdentified("es-ES", 0.3)
    )
    assert lid.best_supported([("sv", 0.97123), ("nn", 0.02)]) == (
        LanguageIdentified("sv-SE", 0.971)
    )
    assert lid.best_supported([("la", 0.9)]) is None
    assert lid.best_supported([]) is None


@pytest.mark.parametrize(
    ("probability", "seconds", "tries", "last", "taken"),
    [
        (0.97, 1.0, 1, False, True),
        (lid.CONFIDENT, 1.0, 1, False, True),
        (0.3, 2.0, 1, False, False),  # unsure: wait for more speech
        (0.3, lid.IDENTIFY_MAX_SECONDS, 2, False, True),  # enough waiting
        (0.3, 4.0, lid.MAX_TRIES, False, True),
        (0.1, 0.6, 1, True, True),  # the stream ended: the best guess
    ],
)
def test_when_a_guess_is_taken(probability, seconds, tries, last, taken):
    assert lid.accepted(probability, seconds=seconds, tries=tries, last=last) is taken


def test_when_a_try_is_due():
    assert lid.worth_trying(1.0, next_try=3.0, ended=True)
    assert not lid.worth_trying(2.9, next_try=3.0, ended=False)
    assert lid.worth_trying(3.0, next_try=3.0, ended=False)
    assert not lid.worth_trying(0.2, next_try=3.0, ended=True)  # a click


def test_auto_is_taken_where_the_engine_identifies():
    params = parse_params(b"language=auto", AUTO_CAPS)
    assert params.language == "auto"
    assert parse_params(b"language=sv-SE", AUTO_CAPS).language == "sv-SE"
    assert parse_params(b"", AUTO_CAPS).language == "en-US"  # the seed's default


def test_auto_is_refused_naming_what_is_supported():
    with pytest.raises(ProtocolError) as refused:
        parse_params(b"language=auto", CAPS)
    assert str(refused.value) == (
        "Language identification (language=auto) is not available with this "
        "server's engine: ask for one of en-US."
    )


def test_aws_does_not_take_auto(settings):
    settings.AWS_REGION = "us-east-1"
    caps = AwsTranscribeEngine().capabilities
    with pytest.raises(ProtocolError, match=r"language=auto.*en-US, en-GB"):
        parse_params(b"language=auto", caps)


def test_an_unsupported_language_reads_as_before():
    with pytest.raises(ProtocolError) as refused:
        parse_params(b"language=xx-XX", AUTO_CAPS)
    assert str(refused.value) == (
        "Unsupported language 'xx-XX': this server accepts en-US, es-ES, sv-SE."
    )


def test_the_language_message():
    message = protocol.language_message(LanguageIdentified("sv-SE", 0.97))
    assert json.loads(message) == {
        "type": "language",
        "language": "sv-SE",
        "probability": 0.97,
    }


@pytest.mark.parametrize(
    ("language", "detected", "spoken"),
    [
        ("auto", "sv-SE", "sv-SE"),
        ("auto", "", "en-US"),  # nothing identified (no speech)
        ("es-ES", "", "es-ES"),
        ("", "", "en-US"),
    ],
)
def test_the_language_spoken(language, detected, spoken):
    session = AudioSession(language=language, detected_language=detected)
    assert session.spoken_language == spoken


class _FakeWhisper:
    """identify() and transcribe() of the worker, scripted."""

    def __init__(self, guesses: list[LanguageIdentified]) -> None:
        self.guesses = guesses
        self.tried: list[float] = []  # seconds of speech of each try
        self.decoded: list[str] = []  # the language of each decoding

    def identify(self, samples: np.ndarray) -> LanguageIdentified:
        self.tried.append(len(samples) / 16000)
        return self.guesses.pop(0)

    def transcribe(self, samples: np.ndarray, language: str, *, final: bool) -> str:
        self.decoded.append(language)
        return f"{language} {len(samples) / 16000:.1f}"


@pytest.fixture
def fake_whisper(monkeypatch):
    def install(*guesses: LanguageIdentified) -> _FakeWhisper:
        fake = _FakeWhisper(list(guesses))
        monkeypatch.setattr(whisper_worker, "identify", fake.identify)
        monkeypatch.setattr(whisper_worker, "transcribe", fake.transcribe)
        monkeypatch.setattr(whisper_worker, "_detector", lambda: None)
        return fake

    return install


def _two_sentences() -> bytes:
    pause = np.zeros(24000, dtype="<i2").tobytes()
    return (
        _espeak_pcm("Hola, buenos días.", "es")
        + pause
        + _espeak_pcm("¿Cómo estás hoy?", "es")
        + pause
    )


def test_unsure_the_worker_waits_and_the_held_speech_is_decoded_after(fake_whisper):
    fake = fake_whisper(
        LanguageIdentified("pt-BR", 0.3), LanguageIdentified("es-ES", 0.8)
    )
    session = whisper_worker.Session(16000, "auto")
    events = _fed(session, _two_sentences(), last=False, partials=True)
    # First try after the first sentence, unsure; the second after the second.
    assert len(fake.tried) == 2
    assert fake.tried[0] < fake.tried[1]
    assert events[0] == LanguageIdentified("es-ES", 0.8)
    finals = events[1:]
    assert [final[4] for final in finals] == [1, 2]  # both, in order
    assert all(final[0].startswith("es ") and not final[1] for final in finals)
    assert fake.decoded == ["es", "es"]
    later = _fed(session, _two_sentences(), last=True, partials=False)
    assert len(fake.tried) == 2  # identified once, for the session
    assert [final[4] for final in later] == [3, 4]


def test_the_end_of_the_stream_takes_the_best_guess(fake_whisper):
    fake = fake_whisper(
        LanguageIdentified("pt-BR", 0.2), LanguageIdentified("pt-BR", 0.25)
    )
    session = whisper_worker.Session(16000, "auto")
    pause = np.zeros(24000, dtype="<i2").tobytes()
    first = _espeak_pcm("Hola, buenos días.", "es") + pause
    assert _fed(session, first, last=False, partials=True) == []  # unsure
    second = _espeak_pcm("¿Cómo estás hoy?", "es")  # still speaking at the end
    events = _fed(session, second, last=True, partials=True)
    assert events[0] == LanguageIdentified("pt-BR", 0.25)  # taken, though unsure
    assert [final[0][:3] for final in events[1:]] == ["pt ", "pt "]
    assert len(fake.tried) == 2  # one try per utterance, none twice at the end


def test_a_stream_that_ends_while_speaking_is_tried_once(fake_whisper):
    fake = fake_whisper(LanguageIdentified("pt-BR", 0.2))
    session = whisper_worker.Session(16000, "auto")
    speech = _espeak_pcm("Hola, buenos días.", "es")
    events = _fed(session, speech, last=True, partials=True)
    assert events[0] == LanguageIdentified("pt-BR", 0.2)
    assert len(fake.tried) == 1


def test_a_session_taken_over_goes_on_in_the_language_identified():
    from transcription.streaming.resume import _params

    identified = AudioSession(language="auto", detected_language="sv-SE")
    assert _params(identified).language == "sv-SE"  # no second identification
    assert _params(AudioSession(language="auto")).language == "auto"
    assert _params(AudioSession(language="es-ES")).language == "es-ES"
