"""daphne → AWS engine → the real SDK → the fake Transcribe service, end to end."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.audio import fixture_pcm
from tests.e2e.servers import drain, run_daphne
from tests.transcription.fake_transcribe import Play, running_fake
from transcription.models import AudioSession, SessionError, Transcript

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="carol")
    return api_token_create(user=user, name="e2e-aws")[1]


@pytest.fixture
def aws_server(transactional_db, tmp_path):
    """The fake service, and daphne configured for it by environment alone."""
    with (
        running_fake(tmp_path) as fake,
        run_daphne({"TRANSCRIPTION_ENGINE": "aws", **fake.env}) as server,
    ):
        server.fake = fake
        yield server


async def test_fixture_words_come_back_through_daphne(aws_server, raw_token):
    pcm = fixture_pcm("two_utterances.wav")
    async with connect(f"{aws_server.ws_url}/?token={raw_token}") as ws:
        for start in range(0, len(pcm), 4096):
            await ws.send(pcm[start : start + 4096])
        await ws.send("END_OF_STREAM")
        messages = await drain(ws)
        assert ws.close_code == 1000
    finals = [m["transcript"] for m in messages if "transcript" in m]
    assert len(finals) == 2
    assert "weather is nice today" in finals[0]
    assert "turn on the lights" in finals[1]
    assert any("partialTranscript" in m for m in messages)
    stored = await sync_to_async(list)(
        Transcript.objects.values_list("text", flat=True)
    )
    assert stored == finals
    (received,) = aws_server.fake.received
    assert received.request_signed
    assert received.bad_envelopes == 0
    assert received.audio_bytes == len(pcm)
    assert "Traceback" not in aws_server.output()


@pytest.mark.parametrize(
    ("play", "code", "kind"),
    [
        (Play(start_error="LimitExceededException"), 1013, "aws_limit"),
        (Play(stream_error="BadRequestException"), 1008, "aws_bad_request"),
        (Play(stream_error="InternalFailureException"), 1011, "aws_service"),
    ],
)
async def test_service_errors_reach_the_client_as_close_codes(
    aws_server, raw_token, play, code, kind
):
    aws_server.fake.play = play
    async with connect(f"{aws_server.ws_url}/?token={raw_token}") as ws:
        await ws.send(b"\0" * 3200)
        messages = await drain(ws)
        assert ws.close_code == code
    assert len(messages) == 1
    assert (play.start_error or play.stream_error) in messages[0]["error"]

    async def session_ended():  # recorded right after the socket is closed
        return await sync_to_async(
            AudioSession.objects.exclude(status="active").exists
        )()

    await _until(session_ended)
    errors = await sync_to_async(list)(
        SessionError.objects.values_list("close_code", "kind")
    )
    assert errors == [(code, kind)]
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.close_code == code


async def test_an_option_ending_in_a_newline_is_refused_before_any_request(
    aws_server, raw_token
):
    url = f"{aws_server.ws_url}/?token={raw_token}&vocabularyName=medical%0A"
    async with connect(url) as ws:
        messages = await drain(ws)
        assert ws.close_code == 1008
    assert messages == [
        {
            "error": "Invalid vocabularyName 'medical\\n': use a name of letters, "
            "digits, '.', '_' or '-'."
        }
    ]
    assert aws_server.fake.received == []  # no stream was opened
    assert "Traceback" not in aws_server.output()


async def _until(condition, bound: float = 20.0) -> None:
    """Wait for what the fake (in its thread) or daphne reports, bounded."""
    async with asyncio.timeout(bound):
        while not await condition():  # noqa: ASYNC110 (another thread or process)
            await asyncio.sleep(0.05)


async def test_client_leaving_mid_stream_leaves_nothing_behind(aws_server, raw_token):
    fake = aws_server.fake

    async def audio_arrived():
        return bool(fake.received and fake.received[0].audio_events)

    async def session_ended():
        return await AudioSession.objects.exclude(status="active").aexists()

    async def stream_reset():
        return fake.received[0].reset

    async with connect(f"{aws_server.ws_url}/?token={raw_token}") as ws:
        await ws.send(b"\0" * 3200)
        await _until(audio_arrived)
    await _until(session_ended)  # recorded once the AWS stream is closed
    await _until(stream_reset)  # the fake saw the HTTP/2 connection go
    session = await AudioSession.objects.aget()
    assert session.close_reason == "client disconnected"
    assert not fake.received[0].ended
    log = aws_server.output()
    assert "Traceback" not in log
    assert "Task was destroyed" not in log
