"""Limits at every size against a real daphne: huge frames, and a client flooding it."""

import asyncio
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import drain, run_daphne
from tests.helpers import eventually
from transcription.models import AudioSession, SessionError

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

TWO_MIB = 2 * 1024 * 1024


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="mallory")
    return api_token_create(user=user, name="e2e")[1]


async def test_a_huge_frame_gets_one_error_and_1009_and_is_recorded(
    echo_server, raw_token
):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}", max_size=None) as ws:
        await ws.send(b"\0" * 1024)
        await ws.send(b"\0" * TWO_MIB)
        messages = await drain(ws)
        assert ws.close_code == 1009
    errors = [m for m in messages if "error" in m]
    assert errors == [
        {
            "error": f"Frame of {TWO_MIB} bytes is larger than the limit of 65536 "
            "bytes (MAX_FRAME_BYTES)."
        }
    ]
    stored = await eventually(lambda: list(SessionError.objects.all()))
    assert [(e.kind, e.close_code) for e in stored] == [("frame", 1009)]


async def test_a_message_over_the_limit_in_fragments_gets_1009(echo_server, raw_token):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}") as ws:
        await ws.send(b"\0" * 40_000 for _ in range(3))  # one message, 3 fragments
        messages = await drain(ws)
        assert ws.close_code == 1009
    assert "larger than the limit of 65536" in messages[-1]["error"]


@pytest.mark.parametrize(
    ("app", "close_code", "received"),
    [
        # daphne as it is: its own 1 MiB limit drops the connection, the app
        # never hears of it (the client sees 1006).
        ("tests.voiceproject.frames_app:application", 1006, []),
        # With server.flow_control: the app is told the size and closes 1009 itself.
        (
            "tests.voiceproject.frames_app_limited:application",
            1009,
            [{"too_big": TWO_MIB}],
        ),
    ],
)
def test_flow_control_against_daphne_as_it_is(app, close_code, received):
    async def send_huge(url):
        async with connect(url, max_size=None) as ws:
            await ws.send(b"\0" * TWO_MIB)
            messages = await drain(ws)
            return ws.close_code, messages

    with run_daphne({"MAX_FRAME_BYTES": "65536"}, app=app) as server:
        code, messages = asyncio.run(send_huge(server.ws_url))
    assert (code, messages) == (close_code, received)


@pytest.mark.parametrize(
    ("app", "closed"),
    [
        # daphne as it is: autobahn refuses to send 1008 itself, the app's send
        # raises and daphne closes 1011 (django/daphne#374), without the reason.
        ("tests.voiceproject.frames_app:application", (1011, "")),
        # With the close codes (server.websocket_protocol): the code and reason
        # the app asked for.
        ("tests.voiceproject.frames_app_limited:application", (1008, "bye")),
    ],
)
def test_close_codes_against_daphne_as_it_is(app, closed):
    async def ask_for_1008(url):
        async with connect(url) as ws:
            await ws.send("close:1008")
            await drain(ws)
            return ws.close_code, ws.close_reason

    with run_daphne(app=app) as server:
        assert asyncio.run(ask_for_1008(server.ws_url)) == closed


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


async def _flood(url: str, seconds: float) -> int:
    """Send 64 KiB frames as fast as the server takes them; returns bytes sent."""
    sent = 0
    frame = b"\x01\x02" * 32768
    async with connect(url) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await ws.send(frame)  # waits while the server does not read
            sent += len(frame)
        await ws.send("END_OF_STREAM")
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert messages == [{"transcript": f"received {sent} bytes"}]
    return sent


def test_a_flooding_client_is_slowed_never_refused_and_memory_stays_bounded(
    transactional_db, raw_token
):
    """An engine 4 MB/s slow, a client on loopback much faster: the server stops
    reading the socket instead of queueing what the engine cannot take."""
    env = {
        "TRANSCRIPTION_ENGINE": "tests.transcription.fake_engines.FastThrottledEngine",
        "MAX_AUDIO_BACKLOG_SECONDS": "1",
        "TRANSCRIPTION_IDLE_TIMEOUT": "5",
    }
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}&sendPartials=false"
        pid = server.process.pid
        asyncio.run(_one_frame(url))  # the server has warmed up
        before = _rss_kib(pid, "VmRSS")
        sent = asyncio.run(_flood(url, seconds=3))
        peak = _rss_kib(pid, "VmHWM")
    assert sent > 4_000_000  # slowed to the engine's pace, not stopped
    grew = (peak - before) / 1024
    print(f"flood: {sent / 1e6:.1f} MB sent in 3 s, server grew {grew:.1f} MiB")
    assert grew < 60, f"grew {grew:.0f} MiB"
    sessions = list(AudioSession.objects.order_by("started_at"))
    assert [s.close_code for s in sessions] == [1000, 1000]
    assert sessions[-1].audio_bytes == sent


async def _one_frame(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(b"\0" * 1024)
        await ws.send("END_OF_STREAM")
        await drain(ws)
