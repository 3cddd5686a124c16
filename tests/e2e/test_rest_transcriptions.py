"""POST /v1/audio/transcriptions through a real daphne, called by OpenAI's own client
(docs/protocol.md §13)."""

import io
import json
import re

import httpx
import numpy as np
import openai
import pytest
import soundfile

from accounts.services import api_token_create
from tests.e2e.servers import ROOT, run_daphne
from tests.e2e.test_languages import SPANISH, _most_words
from tests.transcription.test_whisper_multilingual import _espeak_pcm
from tests.transcription.word_times import boundary_errors, matched, true_words
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURES = ROOT / "tests" / "fixtures"
HELLO = FIXTURES / "hello_world.wav"
HELLO_BYTES = 43846  # its samples: the echo engine counts them


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="erin")
    return api_token_create(user=user, name="rest")[1]


@pytest.fixture
def echo_rest(transactional_db):
    env = {"TRANSCRIPTION_ENGINE": "echo", "MAX_UPLOAD_BYTES": "200000"}
    with run_daphne(env) as server:
        yield server


def client_for(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.http_url}/v1", api_key=token, max_retries=0, timeout=60
    )


def transcribe(server, token: str, path=HELLO, **kwargs):
    with path.open("rb") as audio:
        return client_for(server, token).audio.transcriptions.create(
            model="whisper-1", file=audio, **kwargs
        )


def test_json_is_the_text_and_the_file_is_a_session(echo_rest, raw_token):
    result = transcribe(echo_rest, raw_token)
    assert result.text == f"received {HELLO_BYTES} bytes"
    session = AudioSession.objects.get()
    assert session.status == AudioSession.Status.COMPLETED
    assert session.auth_method == "token"
    assert session.token.name == "rest"
    assert session.audio_bytes == HELLO_BYTES
    assert [t.text for t in session.transcripts.all()] == [result.text]
    assert raw_token not in echo_rest.output()


def test_text_srt_and_vtt(echo_rest, raw_token):
    text = transcribe(echo_rest, raw_token, response_format="text")
    assert text.strip() == f"received {HELLO_BYTES} bytes"
    srt = transcribe(echo_rest, raw_token, response_format="srt")
    assert re.fullmatch(
        r"1\n00:00:00,000 --> 00:00:01,370\nreceived 43846 bytes\n\s*", srt
    ), srt
    vtt = transcribe(echo_rest, raw_token, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.370\n"), vtt
    assert AudioSession.objects.count() == 3


def test_verbose_json_has_segments_with_times(echo_rest, raw_token):
    result = transcribe(echo_rest, raw_token, response_format="verbose_json")
    assert result.duration == pytest.approx(1.370, abs=0.001)
    assert result.language == "en-US"
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (0.0, pytest.approx(1.370, abs=0.001), f"received {HELLO_BYTES} bytes")
    ]


def test_other_formats_are_decoded_in_process(echo_rest, raw_token, tmp_path):
    samples, rate = soundfile.read(HELLO, dtype="int16")
    flac = tmp_path / "hello.flac"
    soundfile.write(flac, samples, rate, format="FLAC")
    result = transcribe(echo_rest, raw_token, path=flac)
    assert result.text == f"received {HELLO_BYTES} bytes"  # the same samples


def test_a_bad_token_is_refused(echo_rest):
    with pytest.raises(openai.AuthenticationError) as refused:
        transcribe(echo_rest, "vp_not-a-token-anyone-has")
    error = refused.value.body
    assert error["message"] == "Invalid token: it is unknown, revoked or expired."
    assert error["code"] == "invalid_api_key"
    assert AudioSession.objects.count() == 0


def test_a_file_over_the_limit_is_refused(echo_rest, raw_token, tmp_path):
    big = tmp_path / "big.wav"
    soundfile.write(big, [0.0] * 160_000, 16000, subtype="PCM_16")  # 320 kB
    with pytest.raises(openai.APIStatusError) as refused:
        transcribe(echo_rest, raw_token, path=big)
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "file_too_large"
    assert "MAX_UPLOAD_BYTES" in refused.value.body["message"]
    assert AudioSession.objects.count() == 0


# openai warns (with a deprecated call) of a response_format it does not know.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_input_gets_openais_error_shape(echo_rest, raw_token):
    with pytest.raises(openai.BadRequestError) as refused:
        transcribe(echo_rest, raw_token, response_format="xml")
    assert refused.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as refused:
        transcribe(echo_rest, raw_token, language="xx")
    assert refused.value.body["message"].startswith("Unsupported language 'xx'")
    with pytest.raises(openai.BadRequestError) as refused:
        transcribe(echo_rest, raw_token, language="auto")  # echo identifies nothing
    assert refused.value.body["param"] == "language"
    assert "language=auto" in refused.value.body["message"]
    not_audio = io.BytesIO(b"this is no audio at all" * 100)
    with pytest.raises(openai.BadRequestError) as refused:
        client_for(echo_rest, raw_token).audio.transcriptions.create(
            model="whisper-1", file=("notes.wav", not_audio)
        )
    assert refused.value.body["param"] == "file"
    # Without the openai client: no file, no model.
    headers = {"Authorization": f"Bearer {raw_token}"}
    url = f"{echo_rest.http_url}/v1/audio/transcriptions"
    missing = httpx.post(url, headers=headers, data={"model": "whisper-1"})
    assert missing.status_code == 400
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    with HELLO.open("rb") as audio:
        no_model = httpx.post(url, headers=headers, files={"file": audio})
    assert json.loads(no_model.text)["error"]["param"] == "model"
    assert AudioSession.objects.count() == 0


def test_the_offline_engine_hears_the_words(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        result = transcribe(server, raw_token, language="en")
        verbose = transcribe(server, raw_token, response_format="verbose_json")
    assert result.text == "hello world"
    assert verbose.text == "hello world"
    (segment,) = verbose.segments
    assert 0.0 <= segment.start < segment.end <= verbose.duration + 0.1
    session = AudioSession.objects.order_by("started_at").first()
    assert session.engine == "pocketsphinx"
    assert session.transcripts.get().text == "hello world"


def test_language_auto_names_the_language_identified(raw_token, tmp_path):
    """Whisper identifies the file's language (espeak-ng's Spanish: synthetic) and
    verbose_json names it, as OpenAI's does when no language is given."""
    spanish = tmp_path / "spanish.wav"
    pcm = _espeak_pcm(SPANISH, "es")
    soundfile.write(spanish, np.frombuffer(pcm, dtype="<i2"), 16000, subtype="PCM_16")
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        verbose = transcribe(
            server,
            raw_token,
            path=spanish,
            language="auto",
            response_format="verbose_json",
        )
    assert verbose.language == "es-ES"
    assert _most_words(verbose.text, SPANISH), verbose.text
    session = AudioSession.objects.get()
    assert (session.language, session.detected_language) == ("auto", "es-ES")


def test_the_aws_engine_answers_through_the_same_path(raw_token, tmp_path):
    """AWS behind the same engine Protocol: the real SDK against the fake service."""
    from tests.transcription.fake_transcribe import running_fake

    two = FIXTURES / "two_utterances.wav"
    with (
        running_fake(tmp_path) as fake,
        run_daphne({"TRANSCRIPTION_ENGINE": "aws", **fake.env}) as server,
    ):
        result = transcribe(server, raw_token, path=two, response_format="verbose_json")
        (received,) = fake.received
    texts = [segment.text for segment in result.segments]
    assert len(texts) == 2
    assert "weather is nice today" in texts[0]
    assert "turn on the lights" in texts[1]
    first, second = result.segments
    assert first.start < first.end <= second.start < second.end
    assert received.request_signed
    session = AudioSession.objects.get()
    assert session.engine == "aws"
    assert session.transcripts.count() == 2


# --- word times: timestamp_granularities[]=word ----------------------------------


def check_words(verbose, fixture: str) -> list[tuple[str, float, float]]:
    """verbose_json's words: in order, each inside a segment (when there are
    segments) and the file; the words timed, for comparing with the truth."""
    timed = [(word.word, word.start, word.end) for word in verbose.words]
    assert timed, verbose
    starts = [start for _, start, _ in timed]
    assert starts == sorted(starts)
    assert all(0 <= start < end <= verbose.duration for _, start, end in timed)
    for segment in verbose.segments or ():
        inside = [w for w in timed if segment.start <= w[1] < segment.end]
        assert all(end <= segment.end for _, _, end in inside)
        assert _plain(" ".join(w for w, _, _ in inside)) == _plain(segment.text)
    assert len(matched(timed, fixture)) >= len(true_words(fixture)) - 2
    return timed


def _plain(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def test_words_alone_or_with_segments_from_the_offline_engine(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    two = FIXTURES / "two_utterances.wav"
    with run_daphne(env) as server:
        alone = transcribe(
            server,
            raw_token,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
        both = transcribe(
            server,
            raw_token,
            path=two,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    # As OpenAI's: words alone when only they are asked for.
    assert alone.segments is None
    assert [w for w, _, _ in check_words(alone, "hello_world")] == ["hello", "world"]
    assert max(boundary_errors(check_words(alone, "hello_world"), "hello_world")) < 0.15
    assert len(both.segments) == 2
    timed = check_words(both, "two_utterances")
    assert max(boundary_errors(timed, "two_utterances")) < 0.15
    session = AudioSession.objects.order_by("started_at").last()
    assert session.parameters["wordTimes"] is True


def test_words_from_whisper(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        verbose = transcribe(
            server,
            raw_token,
            path=FIXTURES / "two_utterances.wav",
            response_format="verbose_json",
            timestamp_granularities=["segment", "word"],
        )
    assert len(verbose.segments) == 2
    timed = check_words(verbose, "two_utterances")
    assert [_plain(w) for w, _, _ in timed] == [
        w for w, _, _ in true_words("two_utterances")
    ]
    errors = boundary_errors(timed, "two_utterances")
    assert max(errors) < 0.4  # measured: 214 ms at most (docs/engines.md)


def test_words_from_aws_are_its_items(raw_token, tmp_path):
    from tests.transcription.fake_transcribe import running_fake

    two = FIXTURES / "two_utterances.wav"
    with (
        running_fake(tmp_path) as fake,
        run_daphne({"TRANSCRIPTION_ENGINE": "aws", **fake.env}) as server,
    ):
        verbose = transcribe(
            server,
            raw_token,
            path=two,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert len(verbose.segments) == 2
    timed = check_words(verbose, "two_utterances")
    assert "lights" in [w for w, _, _ in timed]
    # The fake times its items as pocketsphinx heard them.
    assert max(boundary_errors(timed, "two_utterances")) < 0.15


def test_words_are_asked_for_with_verbose_json_only(echo_rest, raw_token):
    plain = transcribe(echo_rest, raw_token, response_format="verbose_json")
    assert plain.words is None  # not asked: none, as OpenAI's
    assert len(plain.segments) == 1
    echoed = transcribe(
        echo_rest,
        raw_token,
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert echoed.words == []  # the echo engine times no word
    assert echoed.segments is None
    # A segment granularity goes with any format (it is the default).
    segment = transcribe(echo_rest, raw_token, timestamp_granularities=["segment"])
    assert segment.text == f"received {HELLO_BYTES} bytes"
    for response_format in ("json", "text", "srt"):
        with pytest.raises(openai.BadRequestError) as refused:
            transcribe(
                echo_rest,
                raw_token,
                response_format=response_format,
                timestamp_granularities=["word"],
            )
        assert refused.value.body["param"] == "timestamp_granularities"
        assert "verbose_json" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        transcribe(
            echo_rest,
            raw_token,
            response_format="verbose_json",
            timestamp_granularities=["phoneme"],
        )
    assert refused.value.body["message"].startswith(
        "Unsupported timestamp_granularities value 'phoneme'"
    )
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    assert AudioSession.objects.count() == 3
