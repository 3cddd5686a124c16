"""The default offline engine, Whisper, under a real daphne with real clients."""

import asyncio
import json
import os
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import chunks, read_pcm
from tests.e2e.servers import ROOT, children, run_daphne, wait_gone
from tests.transcription.engine_helpers import LIGHTS, WEATHER, words
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="dora")
    return api_token_create(user=user, name="e2e")[1]


async def stream(url: str, audio: bytes, rate: int, speed: float) -> list[dict]:
    """Stream at `speed` times real time, then END_OF_STREAM; every message."""
    messages = []
    async with connect(url) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, piece in enumerate(chunks(audio)):
            await ws.send(piece)
            due = start + (index + 1) * len(piece) / (rate * 2 * speed)
            await asyncio.sleep(max(0.0, due - loop.time()))
        await ws.send("END_OF_STREAM")
        try:
            async for message in ws:
                messages.append(json.loads(message))
        except ConnectionClosed:
            pass
        assert ws.close_code == 1000
    return messages


async def test_daphne_and_transcribe_file_hear_the_words(raw_token):
    audio, rate = read_pcm("two_utterances.wav")
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}&detail=true"
        messages = await stream(url, audio, rate, speed=2.0)
        decoders = children(server.process.pid)
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "manage.py",
                "transcribe_file",
                "tests/fixtures/two_utterances_44k_stereo.wav",
                "--url",
                f"{server.ws_url}/",
                "--token",
                raw_token,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        )
    finals = [m for m in messages if "transcript" in m]
    assert [words(m["transcript"]) for m in finals] == [WEATHER, LIGHTS]
    assert any(m["isPartial"] for m in messages if "partialTranscript" in m)
    assert finals[0]["endTime"] + 1 < finals[1]["startTime"]
    assert decoders  # decoded in a child of daphne
    assert os.getpid() not in decoders
    assert wait_gone(decoders) == set()  # which stopped with daphne

    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert [words(line) for line in printed] == [WEATHER, LIGHTS]
    sessions = await asyncio.to_thread(
        lambda: list(AudioSession.objects.order_by("started_at"))
    )
    assert [s.engine for s in sessions] == ["whisper", "whisper"]
    stored = await asyncio.to_thread(
        lambda: list(sessions[1].transcripts.values_list("text", flat=True))
    )
    assert stored == printed
