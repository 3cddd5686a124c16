"""The seed-004 protocol against a real daphne, with a real WebSocket client."""

import json
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import ROOT, drain, run_daphne
from transcription.models import AudioSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="bob")
    return api_token_create(user=user, name="e2e")[1]


async def test_seed_client_gets_partials_finals_and_1000(echo_server, raw_token):
    url = f"{echo_server.ws_url}/?token={raw_token}&sendPartials=true"
    async with connect(url) as ws:
        for _ in range(3):
            await ws.send(b"\x01\x00" * 512)
        first = json.loads(await ws.recv())
        await ws.send("END_OF_STREAM")
        rest = await drain(ws)
        assert ws.close_code == 1000
    assert first == {"partialTranscript": "1024 bytes"}
    assert rest[-1] == {"transcript": "received 3072 bytes"}
    assert [m for m in rest if "partialTranscript" in m][-1] == {
        "partialTranscript": "3072 bytes"
    }
    # The raw token is in the URL above; it must not reach daphne's access log.
    assert raw_token not in echo_server.output()


async def test_bad_token_refused_after_accept(echo_server, db):
    async with connect(f"{echo_server.ws_url}/?token=nope") as ws:
        messages = await drain(ws)
        assert ws.close_code == 1008
    assert len(messages) == 1
    assert "token" in messages[0]["error"]


async def test_oversized_frame_1009(echo_server, raw_token):
    headers = {"Authorization": f"Bearer {raw_token}"}
    async with connect(
        f"{echo_server.ws_url}/ws/transcribe/", additional_headers=headers
    ) as ws:
        await ws.send(b"\0" * 70000)
        messages = await drain(ws)
        assert ws.close_code == 1009
    assert "65536" in messages[-1]["error"]


def test_transcribe_file_command_prints_finals(echo_server, raw_token):
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "transcribe_file",
            "tests/fixtures/hello_world.wav",
            "--url",
            f"{echo_server.ws_url}/",
            "--token",
            raw_token,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert result.returncode == 0, result.stderr
    # hello_world.wav: 16 kHz mono, 43846 bytes of samples.
    assert result.stdout.strip().startswith("received ")
    assert raw_token not in result.stdout + result.stderr
    session = AudioSession.objects.get()
    assert session.sample_rate == 16000
    assert session.status == "completed"


async def test_idle_timeout_closes_1000_with_reason_through_daphne(raw_token):
    with run_daphne(
        {"TRANSCRIPTION_ENGINE": "echo", "TRANSCRIPTION_IDLE_TIMEOUT": "0.5"}
    ) as server:
        async with connect(
            f"{server.ws_url}/?token={raw_token}&sendPartials=false"
        ) as ws:
            messages = await drain(ws)
            assert ws.close_code == 1000
            assert ws.close_reason == "No audio for 0.5 seconds."
    assert messages == [{"transcript": "received 0 bytes"}]


def test_token_in_an_http_query_is_not_logged(echo_server, raw_token):
    import urllib.request

    with urllib.request.urlopen(  # noqa: S310 (loopback)
        f"{echo_server.http_url}/admin/login/?token={raw_token}", timeout=10
    ) as response:
        assert response.status == 200
    output = echo_server.output()
    assert "token=[redacted]" in output
    assert raw_token not in output
