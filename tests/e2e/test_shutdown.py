"""SIGTERM and SIGINT to a real daphne: sessions drained, a clean exit.

First daphne as it is against daphne with `voiceproject.server.shutdown` (a bare
app), then the project under daphne with the offline engine, its decoding processes
and a real client, several times over (the crash this replaced came once in a few
tries).
"""

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import fixture_pcm
from tests.e2e.servers import drain, run_daphne
from transcription.models import AudioSession, SessionError

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

GOING_AWAY = "The server is going away: it is shutting down. Reconnect to continue."


def _stop(process: subprocess.Popen, sig: signal.Signals) -> int:
    process.send_signal(sig)
    return process.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("app", "close_code", "received"),
    [
        # daphne as it is: the application is cancelled, the socket dropped (1006).
        ("tests.voiceproject.shutdown_app:application", 1006, [{"ready": True}]),
        # With server.shutdown: the application drains first and closes itself.
        (
            "tests.voiceproject.shutdown_app_graceful:application",
            1001,
            [{"ready": True}, {"drained": 10.0}],
        ),
    ],
)
def test_server_shutdown_against_daphne_as_it_is(sig, app, close_code, received):
    async def session(server):
        async with connect(server.ws_url) as ws:
            assert json.loads(await ws.recv()) == {"ready": True}
            returncode = await asyncio.to_thread(_stop, server.process, sig)
            messages = [{"ready": True}, *await drain(ws)]
            return ws.close_code, messages, returncode

    with run_daphne(app=app) as server:
        code, messages, returncode = asyncio.run(session(server))
        output = server.output()
    assert (code, messages) == (close_code, received)
    assert returncode == 0
    assert "Traceback" not in output
    assert ("application stopped" in output) == (close_code == 1001)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="dora")
    return api_token_create(user=user, name="e2e")[1]


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_signal_drains_a_live_offline_session_and_daphne_exits_cleanly(
    attempt, raw_token
):
    sig = signal.SIGTERM if attempt % 2 == 0 else signal.SIGINT
    audio = fixture_pcm("two_utterances.wav")
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}

    async def session(server):
        url = f"{server.ws_url}/?token={raw_token}&sendPartials=false"
        messages = []
        async with connect(url, open_timeout=30, close_timeout=30) as ws:
            for i in range(0, len(audio), 4096):
                await ws.send(audio[i : i + 4096])
            # The first utterance's final: the session is under way, the second
            # utterance still in the engine (no END_OF_STREAM: the signal ends it).
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            decoders = _children(server.process.pid)
            returncode = await asyncio.to_thread(_stop, server.process, sig)
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    messages.append(json.loads(message))
        return messages, ws.close_code, decoders, returncode

    with run_daphne(env) as server:
        messages, close_code, decoders, returncode = asyncio.run(session(server))
        output = server.output()
    assert decoders, "the offline engine runs decoding processes"
    assert returncode == 0, output
    assert "Traceback" not in output, output
    assert "Segmentation fault" not in output, output
    assert "Killed 0 pending application instances" in output  # all drained
    finals = [m["transcript"] for m in messages[:-1]]
    assert len(finals) == 2, messages  # what it heard, the second flushed at the stop
    assert messages[-1] == {"error": GOING_AWAY}
    assert close_code == 1001
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in decoders) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in decoders if _alive(pid)], "decoder processes left"
    session = AudioSession.objects.get()
    assert (session.status, session.close_code) == ("completed", 1001)
    assert session.server_pid == server.process.pid
    assert list(SessionError.objects.values_list("kind", flat=True)) == ["shutdown"]
