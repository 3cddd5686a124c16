"""Limits at every size against a real daphne: huge frames, and a client flooding it."""

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from django.urls import reverse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.e2e import raw_websocket
from tests.e2e.servers import drain, run_daphne, scrape_until
from tests.helpers import eventually
from transcription.admin.dashboard import OTHER_LABEL
from transcription.models import AudioSession, SessionError
from transcription.streaming.protocol import UNKNOWN_PATH

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


PAUSED = ("voiceproject_reading_paused", ())


def test_empty_frames_while_the_engine_is_full_pause_reading_and_stay_bounded(
    transactional_db, raw_token
):
    """docs/protocol.md §7: while a session waits for engine room, every frame it
    has not read is counted at its cost in memory, empty ones too. The backlog of
    8 kHz PCM (60 s) filled with ~1.1 MB, then a million empty frames (6 MB on the
    wire, ~190 MB as daphne's messages if they were all queued), never reading."""
    env = {"TRANSCRIPTION_ENGINE": "tests.transcription.fake_engines.StalledEngine"}
    with run_daphne(env) as server:
        target = f"/?token={raw_token}&sampleRate=8000&sendPartials=false"
        pid = server.process.pid
        warm = raw_websocket.open_websocket(server.port, target)
        warm.sendall(raw_websocket.binary(b"\0" * 1024))
        warm.close()
        asyncio.run(
            eventually(lambda: list(AudioSession.objects.exclude(ended_at=None)))
        )
        before = _rss_kib(pid, "VmRSS")

        sock = raw_websocket.open_websocket(server.port, target)
        audio = raw_websocket.binary(b"\x01\x02" * 512) * 1075  # 1.1 MB
        assert raw_websocket.send_until_stalled(sock, audio, timeout=10) == len(audio)
        empties = raw_websocket.binary() * 1_000_000
        raw_websocket.send_until_stalled(sock, empties, timeout=2)
        scrape_until(f"{server.http_url}/metrics", lambda f: f.get(PAUSED) == 1)
        peak = _rss_kib(pid, "VmHWM")
        sock.close()
    grew = (peak - before) / 1024
    print(f"empty frames: the server grew {grew:.1f} MiB")
    assert grew < 20, f"grew {grew:.0f} MiB"


def test_empty_frames_do_not_keep_a_session_alive(transactional_db, raw_token):
    """An empty binary frame is no audio: the idle timer runs through them."""

    async def idle_with_empty_frames(url):
        async with connect(url) as ws:
            await ws.send(b"\0" * 1024)
            closed = asyncio.ensure_future(drain(ws))
            for _ in range(200):  # 20 s of empty frames, past the idle timeout
                if closed.done():
                    break
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(b"")
                await asyncio.sleep(0.1)
            assert closed.done(), "20 s of empty frames kept the session open"
            await closed
            return ws.close_code, ws.close_reason

    env = {"TRANSCRIPTION_ENGINE": "echo", "TRANSCRIPTION_IDLE_TIMEOUT": "1"}
    with run_daphne(env) as server:
        closed = asyncio.run(
            idle_with_empty_frames(f"{server.ws_url}/?token={raw_token}")
        )
    assert closed == (1000, "No audio for 1 seconds.")


TOO_LONG = "Parameter sampleRate is too long: 5000 characters, at most 256."


async def test_a_parameter_of_5000_digits_is_a_bad_parameter(echo_server, raw_token):
    """Capped before parsing: `int()` of 5,000 digits would raise (a 1011 and a
    traceback); a client without a token is refused for that first."""
    rate = "9" * 5000
    async with connect(
        f"{echo_server.ws_url}/?token={raw_token}&sampleRate={rate}"
    ) as ws:
        messages = await drain(ws)
        assert ws.close_code == 1008
    assert messages == [{"error": TOO_LONG}]
    async with connect(f"{echo_server.ws_url}/?sampleRate={rate}") as ws:
        messages = await drain(ws)
        assert ws.close_code == 1008
    assert "Missing token" in messages[0]["error"]
    stored = await eventually(
        lambda: list(SessionError.objects.values_list("close_code", "kind"))
    )
    assert stored == [(1008, "parameters")]
    assert "Traceback" not in echo_server.output()


def test_an_unknown_path_is_refused_without_a_token_lookup(transactional_db, raw_token):
    async def connect_to(url):
        async with connect(url) as ws:
            messages = await drain(ws)
            return ws.close_code, messages

    lookups = ("voiceproject_token_lookups_total", (("kind", "authenticate"),))
    refused = ("voiceproject_auth_refused_total", (("reason", "unknown_path"),))
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as server:
        for target in ("/nope", f"/nope?token={raw_token}", "/ws/transcribe/x"):
            code, messages = asyncio.run(connect_to(server.ws_url + target))
            assert (code, messages) == (1008, [{"error": UNKNOWN_PATH.message}])
        figures = scrape_until(
            f"{server.http_url}/metrics", lambda f: f.get(refused) == 3
        )
        output = server.output()
    assert lookups not in figures  # no token was looked up
    assert "Traceback" not in output
    assert not AudioSession.objects.exists()


def test_a_client_chosen_close_code_is_one_label_and_one_filter_option(
    transactional_db, raw_token, admin_client
):
    """docs/operations.md §2: a client's own close code (3000-4999) is stored as
    sent, but counted under close_code="other" and filtered as one option."""

    async def leave_with(url, code):
        async with connect(url) as ws:
            await ws.send(b"\0" * 1024)
            await ws.close(code=code)

    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        for code in (4000, 4001, 3999, 1000):
            asyncio.run(leave_with(url, code))
        figures = scrape_until(
            f"{server.http_url}/metrics",
            lambda f: f.get(_sessions("other")) == 3 and f.get(_sessions("1000")) == 1,
        )
    assert not [k for k in figures if "4000" in str(k) or "3999" in str(k)]
    stored = sorted(AudioSession.objects.values_list("close_code", flat=True))
    assert stored == [1000, 3999, 4000, 4001]

    changelist = reverse("admin:transcription_audiosession_changelist")
    response = admin_client.get(changelist)
    options = [
        choice["display"]
        for spec in response.context["cl"].filter_specs
        if getattr(spec, "parameter_name", "") == "close_code"
        for choice in spec.choices(response.context["cl"])
    ]
    assert options == ["All", "1000 normal", OTHER_LABEL]
    others = admin_client.get(changelist, {"close_code": "other"})
    assert sorted(s.close_code for s in others.context["cl"].result_list) == [
        3999,
        4000,
        4001,
    ]


def _sessions(close_code: str) -> tuple:
    return (
        "voiceproject_sessions_total",
        (("close_code", close_code), ("engine", "echo")),
    )


def test_a_client_that_pings_and_never_reads_is_dropped_and_recorded(
    transactional_db, raw_token
):
    """docs/protocol.md §7: autobahn answers every ping; a client that floods pings
    and never reads has its pongs pile up in the server's buffer until more than
    MAX_OUTBOUND_BYTES wait: then it is dropped (1006), counted and recorded."""
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as server:
        sock = raw_websocket.open_websocket(
            server.port, f"/?token={raw_token}", receive_buffer=4096
        )
        sock.sendall(raw_websocket.binary(b"\0" * 1024))  # the session streams
        pings = raw_websocket.ping(b"p" * 125) * 200_000  # 26 MB of pings
        sent = raw_websocket.send_until_stalled(sock, pings, timeout=20)
        sock.close()
        error = asyncio.run(
            eventually(lambda: list(SessionError.objects.values("kind", "message")))
        )
        figures = scrape_until(
            f"{server.http_url}/metrics",
            lambda f: f.get(("voiceproject_outbound_overflows_total", ())) == 1,
        )
        output = server.output()
    assert sent < len(pings)  # dropped before all were sent
    assert [e["kind"] for e in error] == ["outbound"]
    assert "(MAX_OUTBOUND_BYTES)" in error[0]["message"]
    session = AudioSession.objects.get()
    assert (session.close_code, session.status) == (1006, "failed")
    assert figures[_sessions("1006")] == 1
    assert "MAX_OUTBOUND_BYTES (1048576): the client does not read" in output
    assert "Traceback" not in output
