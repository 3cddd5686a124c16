"""The session lifecycle under faults and abuse: backlog, capacity, quotas, failures.

Each test names the protection it checks; removing that protection makes it fail.
"""

import asyncio
import multiprocessing
import os
import signal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from accounts.services import api_token_create
from tests.audio import fixture_pcm
from tests.helpers import eventually, receive_until_close, until
from transcription import services
from transcription.models import AudioSession, SessionError, Transcript
from transcription.runtime import capacity, shutdown, worker_runner
from transcription.streaming import session as stream_session
from voiceproject.server.flow_control import FLOW_CONTROL

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine(settings):
    def use(name: str):
        settings.TRANSCRIPTION_ENGINE = f"tests.transcription.fake_engines.{name}"

    return use


def _session():
    return AudioSession.objects.get()


async def _with_flow_control(raw: str, **params):
    """A communicator whose scope says reading can be paused, as flow control does."""
    from voiceproject.asgi import application

    query = "&".join(f"{k}={v}" for k, v in {"token": raw, **params}.items())
    ws = WebsocketCommunicator(application, f"/?{query}")
    disconnected = asyncio.Event()
    ws.scope["extensions"] = {FLOW_CONTROL: {"disconnected": disconnected}}
    connected, _ = await ws.connect()
    assert connected
    return ws, disconnected


async def test_full_backlog_without_flow_control_gets_1008(
    connect, api_token, engine, settings
):
    engine("SlowEngine")
    settings.MAX_AUDIO_BACKLOG_SECONDS = 0.1  # 3,200 bytes at 16 kHz
    ws = await connect(token=api_token[1], sendPartials="false")
    for _ in range(4):
        await ws.send_to(bytes_data=b"\0" * 4096)
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1008
    [error] = messages
    assert "MAX_AUDIO_BACKLOG_SECONDS" in error["error"]
    assert "0.1 seconds" in error["error"]
    stored = await eventually(lambda: list(SessionError.objects.all()))
    assert [(e.kind, e.close_code) for e in stored] == [("backlog", 1008)]


async def test_with_flow_control_a_fast_sender_waits_and_loses_nothing(
    api_token, engine, settings
):
    """The idle timeout does not run while the sender waits for room."""
    engine("BurstyEngine")
    settings.MAX_AUDIO_BACKLOG_SECONDS = 0.25  # 8,000 bytes
    settings.TRANSCRIPTION_IDLE_TIMEOUT = 0.3  # shorter than one wait for room
    ws, _ = await _with_flow_control(api_token[1], sendPartials="false")
    for _ in range(6):
        await ws.send_to(bytes_data=b"\0" * 8000)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws, wait=20)
    assert messages == [{"transcript": "received 48000 bytes"}]
    assert close["code"] == 1000
    await ws.disconnect()


async def test_a_sender_waiting_for_room_stops_waiting_when_the_client_leaves(
    api_token, engine, settings
):
    engine("BurstyEngine")
    settings.MAX_AUDIO_BACKLOG_SECONDS = 0.25
    ws, disconnected = await _with_flow_control(api_token[1], sendPartials="false")
    for _ in range(3):
        await ws.send_to(bytes_data=b"\0" * 8000)
    await until(lambda: any(c.waiting_for_room for c in shutdown._sessions))
    disconnected.set()  # what flow control does when the socket closes
    await ws.send_input({"type": "websocket.disconnect", "code": 1001})
    session = await eventually(
        lambda: AudioSession.objects.exclude(status="active").first(), seconds=3
    )
    assert session.status == "completed"
    assert session.close_reason == "client disconnected"


async def test_process_capacity_is_reserved_before_any_await(
    connect, api_token, settings, echo_engine
):
    settings.MAX_SESSIONS_PER_PROCESS = 2
    settings.MAX_SESSIONS_PER_TOKEN = 10
    opened = await asyncio.gather(
        *(connect(token=api_token[1], sendPartials="false") for _ in range(5))
    )
    closes = []
    for ws in opened:
        await ws.send_to(text_data="END_OF_STREAM")
        _, close = await receive_until_close(ws)
        closes.append(close["code"])
    assert sorted(closes) == [1000, 1000, 1013, 1013, 1013]
    assert capacity.open_count() == 0


async def test_capacity_is_released_when_the_engine_fails_to_start(
    connect, api_token, settings, engine
):
    settings.MAX_SESSIONS_PER_PROCESS = 1
    engine("FailingOpenEngine")
    ws = await connect(token=api_token[1])
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1011
    assert messages == [
        {"error": "Transcription is unavailable: the engine did not start."}
    ]
    assert capacity.open_count() == 0
    settings.TRANSCRIPTION_ENGINE = "echo"
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(text_data="END_OF_STREAM")
    _, close = await receive_until_close(ws)
    assert close["code"] == 1000


async def test_sessions_per_user_limit_counts_every_token(
    connect, api_token, settings, echo_engine, user
):
    settings.MAX_SESSIONS_PER_USER = 1
    _, other_raw = await sync_to_async(api_token_create)(user=user, name="second")
    first = await connect(token=api_token[1], sendPartials="false")
    second = await connect(token=other_raw)
    messages, close = await receive_until_close(second)
    assert close["code"] == 1008
    assert messages == [
        {"error": "Too many concurrent sessions for this user (limit 1)."}
    ]
    await first.send_to(text_data="END_OF_STREAM")
    _, close = await receive_until_close(first)
    assert close["code"] == 1000


async def test_repeated_end_of_stream_is_ignored(connect, api_token, echo_engine):
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    for _ in range(3):
        await ws.send_to(text_data="END_OF_STREAM")
    await ws.send_to(bytes_data=b"\0" * 1024)  # after the end: not counted
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 1024 bytes"}]
    assert close["code"] == 1000


async def test_oversized_text_frame_gets_1009(connect, api_token, settings):
    settings.MAX_FRAME_BYTES = 100
    ws = await connect(token=api_token[1])
    await ws.send_to(text_data="x" * 101)
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1009
    assert "101 bytes" in messages[0]["error"]


async def test_a_heartbeat_that_fails_does_not_stop_the_timers(
    connect, api_token, settings, monkeypatch, echo_engine
):
    failed = asyncio.Event()

    def database_down(**kwargs):
        failed.set()
        raise OperationalError("database is down")

    monkeypatch.setattr(stream_session, "HEARTBEAT_SECONDS", 0.02)
    monkeypatch.setattr(services, "session_heartbeat", database_down)
    settings.TRANSCRIPTION_IDLE_TIMEOUT = 0.4
    ws = await connect(token=api_token[1], sendPartials="false")
    await asyncio.wait_for(failed.wait(), 5)
    _, close = await receive_until_close(ws)  # the idle timeout still ran
    assert close["code"] == 1000
    assert "No audio" in close["reason"]


async def test_a_failed_end_record_still_closes_the_socket(
    connect, api_token, monkeypatch, echo_engine
):
    def database_down(**kwargs):
        raise OperationalError("database is down")

    monkeypatch.setattr(services, "session_end", database_down)
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 0 bytes"}]
    assert close["code"] == 1000


async def test_a_final_that_cannot_be_stored_is_not_sent(
    connect, api_token, monkeypatch, echo_engine
):
    def broken(**kwargs):
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr(services, "transcript_add_final", broken)
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1011
    assert messages == [
        {"error": "Transcription stopped: the server could not store the transcript."}
    ]
    assert await sync_to_async(Transcript.objects.count)() == 0


async def test_a_final_held_while_the_database_is_away_is_sent_and_stored_later(
    connect, api_token, monkeypatch, echo_engine
):
    store = services.transcript_add_final
    failures = 0

    def database_away_twice(**kwargs):
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OperationalError("database is down")
        return store(**kwargs)

    monkeypatch.setattr(services, "transcript_add_final", database_away_twice)
    ws = await connect(token=api_token[1], sendPartials="false")
    await ws.send_to(bytes_data=b"\0" * 1024)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 1024 bytes"}]
    assert close["code"] == 1000
    session = await eventually(
        lambda: AudioSession.objects.exclude(status="active").first()
    )
    assert session.close_code == 1000
    texts = await sync_to_async(list)(Transcript.objects.values_list("text", flat=True))
    assert texts == ["received 1024 bytes"]
    assert failures == 2


async def _silent_receiver():
    """A receiver that takes the connection and never answers."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_client_leaving_during_the_final_flush_is_recorded(
    connect, api_token, settings
):
    server, port = await _silent_receiver()
    settings.TRANSCRIPTION_ENGINE = "tests.transcription.voice_fakes.WordsEngine"
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", port
    settings.VOICE_WORKER_IN_PROCESS = True
    settings.SILENCE_SECONDS = 60.0
    try:
        ws = await connect(token=api_token[1])
        await ws.send_to(bytes_data=b"hello there")
        await ws.send_to(text_data="END_OF_STREAM")
        assert await ws.receive_json_from() == {"transcript": "hello there"}
        await ws.disconnect()  # while the consumer waits for the reply
        session = await eventually(
            lambda: AudioSession.objects.exclude(status="active").first()
        )
        assert session.status == "completed"
        assert session.close_reason == "client disconnected"
    finally:
        await worker_runner.stop_in_process()
        server.close()


async def test_a_killed_decoder_ends_the_session_and_keeps_what_was_said(
    connect, api_token, settings
):
    """Chaos: the decoding process dies mid-session."""
    settings.TRANSCRIPTION_ENGINE = "pocketsphinx"
    audio = fixture_pcm("hello_world.wav")
    silence = b"\0" * 32000  # ends the utterance: its final comes
    ws = await connect(token=api_token[1], sendPartials="false")
    for start in range(0, len(audio + silence), 4096):
        await ws.send_to(bytes_data=(audio + silence)[start : start + 4096])
    assert await ws.receive_json_from(timeout=60) == {"transcript": "hello world"}
    for child in multiprocessing.active_children():  # the decoding processes
        os.kill(child.pid, signal.SIGKILL)
    await ws.send_to(bytes_data=audio[:4096])
    messages, close = await receive_until_close(ws, wait=60)
    assert close["code"] == 1011
    assert messages == [{"error": "Transcription failed: the decoder process stopped."}]
    texts = await sync_to_async(list)(Transcript.objects.values_list("text", flat=True))
    assert texts == ["hello world"]  # what was sent before is kept
