"""The consumer, branch by branch, through the real ASGI stack (echo engine)."""

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts.services import api_token_revoke
from tests.helpers import eventually, receive_until_close
from transcription.models import AudioSession, SessionError, Transcript
from transcription.streaming import session as stream_session

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("echo_engine"),
    pytest.mark.services,
]


def _session():
    return AudioSession.objects.get()


async def test_streams_partials_and_final_then_closes_1000(connect, api_token):
    _, raw = api_token
    ws = await connect(token=raw)
    await ws.send_to(bytes_data=b"\0" * 1024)
    assert await ws.receive_json_from() == {"partialTranscript": "1024 bytes"}
    await ws.send_to(bytes_data=b"\0" * 2048)
    assert await ws.receive_json_from() == {"partialTranscript": "3072 bytes"}
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 3072 bytes"}]
    assert close["code"] == 1000
    session = await sync_to_async(_session)()
    assert session.status == "completed"
    assert session.close_code == 1000
    assert session.audio_bytes == 3072
    assert session.audio_seconds == pytest.approx(3072 / 32000, abs=1e-3)
    texts = await sync_to_async(list)(Transcript.objects.values_list("text", flat=True))
    assert texts == ["received 3072 bytes"]


async def test_send_partials_false_sends_only_finals(connect, api_token):
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 1024 bytes"}]
    assert close["code"] == 1000


async def test_detail_adds_timings(connect, api_token):
    ws = await connect(token=api_token[1], sendPartials="false", detail="true")
    await ws.send_to(bytes_data=b"\0" * 32000)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, _ = await receive_until_close(ws)
    assert messages[0]["transcript"] == "received 32000 bytes"
    assert messages[0]["endTime"] == 1.0
    assert messages[0]["isPartial"] is False


async def test_alias_path_and_bearer_header(connect, api_token):
    headers = [(b"authorization", f"Bearer {api_token[1]}".encode())]
    ws = await connect("/ws/transcribe/", headers=headers, sendPartials="false")
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 0 bytes"}]
    assert close["code"] == 1000


async def _refused(ws, code=1008):
    messages, close = await receive_until_close(ws)
    assert len(messages) == 1
    assert set(messages[0]) == {"error"}
    assert close["code"] == code
    return messages[0]["error"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"language": "xx-XX"}, ["language", "en-US"]),
        ({"encoding": "mp3"}, ["encoding", "pcm"]),
        ({"sampleRate": "fast"}, ["sampleRate", "integer"]),
        ({"sampleRate": "1000"}, ["sampleRate", "8000"]),
        ({"sampleRate": "16000.5"}, ["sampleRate"]),
        ({"sendPartials": "yes"}, ["sendPartials", "'true'"]),
        ({"wordTimes": "true"}, ["wordTimes", "detail=true"]),
        ({"wordTimes": "1", "detail": "true"}, ["wordTimes", "'true'"]),
    ],
)
async def test_bad_parameters_get_error_and_1008(connect, api_token, params, words):
    ws = await connect(token=api_token[1], **params)
    error = await _refused(ws)
    for word in words:
        assert word in error
    session = await sync_to_async(_session)()
    assert session.status == "rejected"
    assert session.close_code == 1008
    kinds = await sync_to_async(list)(
        SessionError.objects.values_list("kind", flat=True)
    )
    assert kinds == ["parameters"]


async def test_missing_token(connect, db):
    ws = await connect()
    assert "token" in await _refused(ws)
    # Refused before authentication: counted, never stored.
    assert not await AudioSession.objects.aexists()
    assert not await SessionError.objects.aexists()


async def test_unknown_token_is_refused_without_echoing_it(connect, db):
    raw = "vp_" + "x" * 43
    ws = await connect(token=raw)
    error = await _refused(ws)
    assert "Invalid token" in error
    assert raw not in error
    assert not await AudioSession.objects.aexists()
    assert not await SessionError.objects.aexists()


async def test_revoked_token_is_refused(connect, api_token):
    token, raw = api_token
    await sync_to_async(api_token_revoke)(token=token)
    ws = await connect(token=raw)
    assert "Invalid token" in await _refused(ws)


async def test_oversized_frame_gets_1009(connect, api_token, settings):
    settings.MAX_FRAME_BYTES = 4096
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"\0" * 4097)
    error = await _refused(ws, code=1009)
    assert "4097" in error
    assert "4096" in error
    session = await sync_to_async(_session)()
    assert session.close_code == 1009


async def test_other_text_frame_gets_1008(connect, api_token):
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(text_data="HELLO")
    assert "END_OF_STREAM" in await _refused(ws)


async def test_idle_timeout_closes_1000_with_reason(connect, api_token, settings):
    settings.TRANSCRIPTION_IDLE_TIMEOUT = 0.3
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 1024 bytes"}]
    assert close["code"] == 1000
    assert "No audio" in close["reason"]


async def test_sessions_per_token_limit(connect, api_token, settings):
    settings.MAX_SESSIONS_PER_TOKEN = 1
    first = await connect(token=api_token[1])
    second = await connect(token=api_token[1])
    assert "concurrent" in await _refused(second)
    await first.send_to(text_data="END_OF_STREAM")
    _, close = await receive_until_close(first)
    assert close["code"] == 1000


async def test_sessions_per_process_limit(connect, api_token, settings):
    settings.MAX_SESSIONS_PER_PROCESS = 0
    ws = await connect(token=api_token[1])
    assert "capacity" in await _refused(ws, code=1013)


async def test_heartbeat_stores_audio_while_the_session_runs(
    connect, api_token, monkeypatch
):
    monkeypatch.setattr(stream_session, "HEARTBEAT_SECONDS", 0.1)
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 3200)
    before = await sync_to_async(_session)()
    session = await eventually(lambda: (s := _session()).audio_bytes == 3200 and s)
    assert session.status == "active"
    assert session.audio_bytes == 3200  # stored before the session ends
    assert session.heartbeat_at > before.heartbeat_at
    await ws.send_to(text_data="END_OF_STREAM")
    await receive_until_close(ws)


async def test_sessions_of_a_stopped_server_do_not_count_against_a_token(
    connect, api_token, settings
):
    settings.MAX_SESSIONS_PER_TOKEN = 1
    token, raw = api_token
    long_ago = timezone.now() - dt.timedelta(minutes=10)
    await sync_to_async(AudioSession.objects.create)(
        engine="echo", token=token, heartbeat_at=long_ago
    )
    ws = await connect(token=raw, sendPartials="false")
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1000
    assert messages == [{"transcript": "received 0 bytes"}]
