"""The offline engine under a real daphne: spawned decoders, a real WebSocket client."""

import json
import os

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import chunks, read_pcm
from tests.e2e.servers import children, drain, run_daphne, wait_gone

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="carol")
    return api_token_create(user=user, name="e2e")[1]


async def test_daphne_transcribes_hello_world_in_a_decoder_process(raw_token):
    audio, _ = read_pcm("hello_world.wav")
    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            for piece in chunks(audio):
                await ws.send(piece)
            await ws.send("END_OF_STREAM")
            messages = []
            try:
                async for message in ws:
                    messages.append(json.loads(message))
            except ConnectionClosed:
                pass
            assert ws.close_code == 1000
        decoders = children(server.process.pid)
    assert messages[-1] == {"transcript": "hello world"}
    assert any("partialTranscript" in m for m in messages[:-1])
    assert decoders  # the decoding ran in a child process of daphne
    assert os.getpid() not in decoders
    assert wait_gone(decoders) == set()  # and it stopped with daphne


def test_transcribe_file_prints_the_words_of_a_stereo_44k_wav(raw_token):
    """The foundation's promise: a fixture through the file client and daphne."""
    import subprocess
    import sys

    from tests.e2e.servers import ROOT
    from transcription.models import AudioSession

    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        result = subprocess.run(
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
    assert result.returncode == 0, result.stderr
    finals = result.stdout.strip().splitlines()
    assert len(finals) == 2
    assert "weather" in finals[0]
    assert "lights" in finals[1]
    session = AudioSession.objects.get()
    assert session.sample_rate == 44100
    assert list(session.transcripts.values_list("text", flat=True)) == finals


async def test_word_times_over_the_websocket(raw_token):
    """detail=true&wordTimes=true: each final with its words; without detail,
    refused."""
    audio, _ = read_pcm("two_utterances.wav")
    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}&sendPartials=false"
        async with connect(f"{url}&detail=true&wordTimes=true") as ws:
            for piece in chunks(audio, 8192):
                await ws.send(piece)
            await ws.send("END_OF_STREAM")
            finals = await drain(ws)
            assert ws.close_code == 1000
        async with connect(f"{url}&wordTimes=true") as ws:
            refused = await drain(ws)
            assert ws.close_code == 1008
    assert len(finals) == 2
    for final in finals:
        assert [w["word"] for w in final["words"]] == final["transcript"].split()
        assert set(final["words"][0]) == {"word", "start", "end"}
    assert finals[0]["words"][-1]["end"] < finals[1]["words"][0]["start"]
    assert refused == [
        {
            "error": "wordTimes=true needs detail=true: a final's words come with its "
            "other times."
        }
    ]
