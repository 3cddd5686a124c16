"""The AWS engine: the real amazon-transcribe SDK against the local fake service."""

import asyncio
import logging

import pytest
from asgiref.sync import sync_to_async

from tests.audio import chunks, fixture_pcm
from tests.helpers import receive_until_close, until
from tests.transcription.engine_helpers import revoked_mid_stream
from tests.transcription.fake_transcribe import Play, running_fake
from transcription.engines import EngineError, StreamParams, _load, aws_transcribe
from transcription.engines.aws_transcribe import AwsTranscribeEngine
from transcription.engines.echo import EchoEngine
from transcription.models import AudioSession, SessionError, Transcript
from transcription.streaming import protocol

SESSION_ID = "0d6f0f5e-7a3c-4f7e-9d8e-2b1c3a4d5e6f"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with running_fake(tmp_path_factory.mktemp("fake-transcribe")) as server:
        yield server


@pytest.fixture
def aws(fake, settings, monkeypatch):
    """The process configured for the fake, as a deployment would be for AWS."""
    fake.play = Play()
    fake.received.clear()
    fake.refusals.clear()
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    settings.AWS_TRANSCRIBE_ENDPOINT = fake.url
    settings.AWS_REGION = fake.region
    settings.TRANSCRIPTION_ENGINE = "aws"
    _load.cache_clear()
    yield fake
    _load.cache_clear()


async def _transcribe(stream, audio_frames) -> list:
    for frame in audio_frames:
        await stream.send_audio(frame)
    await stream.end_audio()
    try:
        return [event async for event in stream.events()]
    finally:
        await stream.aclose()


# --- the engine on its own -------------------------------------------------


async def test_engine_streams_audio_and_returns_partials_and_finals(aws):
    engine = AwsTranscribeEngine()
    stream = await engine.open(StreamParams(session_id=SESSION_ID))
    audio = fixture_pcm("two_utterances.wav")
    events = await _transcribe(stream, chunks(audio))
    finals = [event.text for event in events if not event.is_partial]
    assert len(finals) == 2
    assert "weather is nice today" in finals[0]
    assert "turn on the lights" in finals[1]
    assert any(event.is_partial for event in events)
    assert finals[0] != finals[1]
    first = next(event for event in events if not event.is_partial)
    assert 0 <= first.start < first.end < 3
    assert first.result_id

    (received,) = aws.received
    assert received.request_signed
    assert received.bad_envelopes == 0
    assert received.ended
    assert received.audio_bytes == len(audio)
    # Coalesced and split: fewer events than frames, none above 1 s of audio.
    assert len(received.audio_events) < len(chunks(audio))
    assert max(received.audio_events) <= 32000
    headers = received.headers
    assert headers["x-amzn-transcribe-language-code"] == "en-US"
    assert headers["x-amzn-transcribe-sample-rate"] == "16000"
    assert headers["x-amzn-transcribe-media-encoding"] == "pcm"
    assert headers["x-amzn-transcribe-session-id"] == SESSION_ID


async def test_tiny_frames_travel_together_and_big_ones_are_split(aws):
    aws.play = Play(script=[])
    engine = AwsTranscribeEngine()
    stream = await engine.open(StreamParams(sample_rate=8000))
    tiny = [b"\1\0" * 80 for _ in range(50)]  # 10 ms each
    big = [b"\2\0" * 32768]  # 64 KiB: 4 s at 8 kHz
    await _transcribe(stream, [*tiny, *big])
    (received,) = aws.received
    assert received.audio_bytes == 50 * 160 + 65536
    assert len(received.audio_events) < 50
    assert max(received.audio_events) <= 16000  # 1 s at 8 kHz
    assert received.bad_envelopes == 0


async def test_empty_results_and_empty_transcripts_are_skipped(aws):
    # "" is an event with an empty Results list, " " a result with a blank transcript.
    script = [("", True), ("hello", True), (" ", True), ("", False), ("hello", False)]
    aws.play = Play(script=script)
    engine = AwsTranscribeEngine()
    stream = await engine.open(StreamParams(encoding="flac", sample_rate=44100))
    events = await _transcribe(stream, [b"x" * 4000])
    assert [(event.text, event.is_partial) for event in events] == [
        ("hello", True),
        ("hello", False),
    ]


async def test_pass_through_options_reach_the_service(aws):
    engine = AwsTranscribeEngine()
    options = {
        "showSpeakerLabel": "true",
        "enablePartialResultsStabilization": "true",
        "partialResultsStability": "high",
        "vocabularyName": "medical-terms",
        "contentRedactionType": "PII",
        "piiEntityTypes": "NAME,ADDRESS",
    }
    aws.play = Play(script=[])
    stream = await engine.open(StreamParams(language="de-DE", options=options))
    await _transcribe(stream, [])
    headers = aws.received[0].headers
    assert headers["x-amzn-transcribe-language-code"] == "de-DE"
    assert headers["x-amzn-transcribe-show-speaker-label"] == "True"
    assert headers["x-amzn-transcribe-enable-partial-results-stabilization"] == "True"
    assert headers["x-amzn-transcribe-partial-results-stability"] == "high"
    assert headers["x-amzn-transcribe-vocabulary-name"] == "medical-terms"
    assert headers["x-amzn-transcribe-content-redaction-type"] == "PII"
    assert headers["x-amzn-transcribe-pii-entity-types"] == "NAME,ADDRESS"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("showSpeakerLabel", "yes"),
        ("partialResultsStability", "extreme"),
        ("vocabularyName", "bad name\r\nx-injected: 1"),
    ],
)
async def test_bad_option_values_are_refused_before_any_request(aws, name, value):
    engine = AwsTranscribeEngine()
    with pytest.raises(EngineError) as caught:
        await engine.open(StreamParams(options={name: value}))
    assert caught.value.close_code == 1008
    assert name in caught.value.message
    assert aws.received == []


@pytest.mark.parametrize(
    "name",
    ["vocabularyName", "vocabularyFilterName", "languageModelName", "piiEntityTypes"],
)
@pytest.mark.parametrize("ending", ["%0A", "%0D%0A", "%0Ax-injected:%201"])
def test_a_name_with_a_trailing_newline_is_refused(name, ending):
    """`match` with `^…$` took them: `$` also matches before a final newline."""
    caps = AwsTranscribeEngine.capabilities
    params = protocol.parse_params(f"{name}=NAME{ending}".encode(), caps)
    assert "\n" in params.options[name]  # the parser decodes it and passes it on
    with pytest.raises(EngineError) as caught:
        aws_transcribe.sdk_options(params.options)
    assert caught.value.close_code == 1008
    assert caught.value.message.startswith(f"Invalid {name} 'NAME")
    assert aws_transcribe.sdk_options({name: "NAME"})  # the same name, no newline


def test_validation_uses_the_aws_lists():
    caps = AwsTranscribeEngine.capabilities
    query = b"language=de-DE&sampleRate=8000&encoding=flac&vocabularyName=v1"
    params = protocol.parse_params(query, caps)
    assert (params.language, params.sample_rate, params.encoding) == (
        "de-DE",
        8000,
        "flac",
    )
    assert params.options == {"vocabularyName": "v1"}
    for bad in (b"language=xx-XX", b"sampleRate=96000", b"encoding=mp3"):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_params(bad, caps)
    # An engine with a narrower list refuses what AWS takes.
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_params(b"language=de-DE", EchoEngine.capabilities)


# --- through the consumer --------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


def _session():
    return AudioSession.objects.get()


def _errors():
    return list(SessionError.objects.values_list("close_code", "kind", "message"))


@pytestmark_db
async def test_consumer_transcribes_through_aws(aws, connect, api_token):
    ws = await connect(token=api_token[1])
    for frame in chunks(fixture_pcm("hello_world.wav")):
        await ws.send_to(bytes_data=frame)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    finals = [m["transcript"] for m in messages if "transcript" in m]
    assert finals == ["hello world"]
    assert any("partialTranscript" in m for m in messages)
    assert messages[-1] == {"transcript": "hello world"}  # every final before 1000
    assert close["code"] == 1000
    session = await sync_to_async(_session)()
    assert session.engine == "aws"
    assert session.status == "completed"
    stored = await sync_to_async(list)(
        Transcript.objects.values_list("text", flat=True)
    )
    assert stored == ["hello world"]
    assert aws.received[0].headers["x-amzn-transcribe-session-id"] == str(session.pk)


@pytestmark_db
async def test_speaker_labels_reach_clients_that_ask_for_detail(
    aws, connect, api_token
):
    aws.play = Play(script=[("hello there", True), ("hello there", False)])
    ws = await connect(
        token=api_token[1], showSpeakerLabel="true", detail="true", sendPartials="false"
    )
    await ws.send_to(bytes_data=b"\0" * 3200)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1000
    assert [(m["transcript"], m["speaker"]) for m in messages] == [
        ("hello there", "spk_0")
    ]


@pytestmark_db
async def test_consumer_closes_1008_when_the_token_is_revoked(
    aws, connect, api_token, settings
):
    settings.ACCESS_CHECK_SECONDS = 0.05
    ws = await connect(token=api_token[1])
    await revoked_mid_stream(ws, api_token[0], fixture_pcm("hello_world.wav"))


START_ERRORS = [
    ("LimitExceededException", 1013, "aws_limit"),
    ("BadRequestException", 1008, "aws_bad_request"),
    ("InternalFailureException", 1011, "aws_service"),
    ("ServiceUnavailableException", 1011, "aws_service"),
    ("ConflictException", 1011, "aws_service"),
]


async def _one_error_then_close(ws, code):
    messages, close = await receive_until_close(ws)
    errors = [m for m in messages if "error" in m]
    assert len(errors) == 1
    assert messages[-1] == errors[0]
    assert close["code"] == code
    assert "Traceback" not in errors[0]["error"]
    return errors[0]["error"]


@pytestmark_db
@pytest.mark.parametrize(("exception", "code", "kind"), START_ERRORS)
async def test_service_error_at_start(aws, connect, api_token, exception, code, kind):
    aws.play = Play(start_error=exception, error_message="the fake says no")
    ws = await connect(token=api_token[1])
    error = await _one_error_then_close(ws, code)
    assert exception in error
    assert "the fake says no" in error
    assert await sync_to_async(_errors)() == [(code, kind, error)]
    session = await sync_to_async(_session)()
    assert (session.status, session.close_code) == ("failed", code)


@pytestmark_db
@pytest.mark.parametrize(("exception", "code", "kind"), START_ERRORS)
async def test_service_error_mid_stream(aws, connect, api_token, exception, code, kind):
    aws.play = Play(stream_error=exception, error_message="mid-stream trouble")
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=fixture_pcm("hello_world.wav")[:8000])
    error = await _one_error_then_close(ws, code)
    assert exception in error
    assert "mid-stream trouble" in error
    assert await sync_to_async(_errors)() == [(code, kind, error)]


@pytestmark_db
async def test_service_no_audio_timeout_closes_1000_with_reason(
    aws, connect, api_token
):
    aws.play = Play(no_audio_timeout=0.3)
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"\0" * 1024)
    messages, close = await receive_until_close(ws)
    assert messages == []
    assert close["code"] == 1000
    assert "no audio" in close["reason"]
    session = await sync_to_async(_session)()
    assert (session.status, session.close_code) == ("completed", 1000)
    assert "no audio" in session.close_reason


@pytestmark_db
async def test_missing_credentials_close_1011(
    aws, connect, api_token, monkeypatch, tmp_path
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    ws = await connect(token=api_token[1])
    error = await _one_error_then_close(ws, 1011)
    assert "credentials" in error
    assert await sync_to_async(_errors)() == [(1011, "aws_credentials", error)]
    assert aws.received == []


@pytestmark_db
async def test_unreachable_service_closes_1011(aws, connect, api_token, settings):
    settings.AWS_TRANSCRIBE_ENDPOINT = "https://127.0.0.1:9"  # nothing listens
    ws = await connect(token=api_token[1])
    error = await _one_error_then_close(ws, 1011)
    assert "Could not reach the transcription service" in error
    assert await sync_to_async(_errors)() == [(1011, "aws_connection", error)]


@pytestmark_db
async def test_silent_service_closes_1011(aws, connect, api_token, monkeypatch):
    monkeypatch.setattr(aws_transcribe, "START_TIMEOUT_SECONDS", 0.5)
    aws.play = Play(hang=True)
    ws = await connect(token=api_token[1])
    error = await _one_error_then_close(ws, 1011)
    assert "did not answer in time" in error
    assert await sync_to_async(_errors)() == [(1011, "aws_connection", error)]


@pytestmark_db
async def test_client_leaving_mid_stream_ends_everything(
    aws, connect, api_token, caplog
):
    caplog.set_level(logging.WARNING)
    # No decoding: pocketsphinx would hold the GIL in the fake's thread while the
    # communicator gives the consumer one second to disconnect.
    aws.play = Play(script=[])
    ws = await connect(token=api_token[1])
    for frame in chunks(fixture_pcm("hello_world.wav"))[:20]:
        await ws.send_to(bytes_data=frame)
    await until(lambda: aws.received and aws.received[0].audio_events)
    await ws.disconnect(timeout=20)  # bounded; the default 1 s is tight under load
    await until(lambda: aws.received[0].reset)  # the fake saw the connection go
    mine = [
        task
        for task in asyncio.all_tasks()
        if "aws_transcribe" in repr(task.get_coro()) and not task.done()
    ]
    assert mine == []
    assert not aws.received[0].ended
    # No "Task was destroyed", no CRT callback resolving a cancelled future.
    noise = [r for r in caplog.records if r.name in ("asyncio", "concurrent.futures")]
    assert noise == []
    session = await sync_to_async(_session)()
    assert session.status == "completed"
    assert session.close_reason == "client disconnected"
