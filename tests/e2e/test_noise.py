"""No words from no speech (issue 21 item 5), through a real daphne and real clients.

Noises made in the test (tests/noises.py: white, pink, 50 Hz hum, clicks, a tone,
plucked notes), each streamed in real time, get no transcript at all, and so nothing
goes to the receiver; speech, alone or over moderate noise, still gets its words.
"""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import chunks, fixture_pcm
from tests.e2e.servers import run_daphne
from tests.noises import NOISES, mixed, noise, pcm
from tests.transcription.engine_helpers import LIGHTS, WEATHER, words
from tests.transcription.voice_fakes import TcpReceiver
from transcription.models import AudioSession, Transcript

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = 12  # of each noise


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="nora")
    return api_token_create(user=user, name="e2e")[1]


async def stream(url: str, audio: bytes) -> tuple[str, list[dict]]:
    """Real time, in 32 ms frames, then END_OF_STREAM: (session id, messages)."""
    messages = []
    async with connect(url, close_timeout=30) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, piece in enumerate(chunks(audio)):
            await ws.send(piece)
            due = start + (index + 1) * len(piece) / 32000
            await asyncio.sleep(max(0.0, due - loop.time()))
        await ws.send("END_OF_STREAM")
        try:
            async for message in ws:
                messages.append(json.loads(message))
        except ConnectionClosed:
            pass
        assert ws.close_code == 1000
    [session] = [m for m in messages if m.get("type") == "session"]
    return session["id"], [m for m in messages if m.get("type") != "session"]


def _finals(messages: list[dict]) -> str:
    return " ".join(words(m["transcript"]) for m in messages if "transcript" in m)


async def test_noise_gets_no_transcript_and_speech_its_words(raw_token):
    receiver = await TcpReceiver().start()
    env = {
        "TRANSCRIPTION_ENGINE": "offline",
        "OFFLINE_DECODER_PROCESSES": "1",
        "MAX_SESSIONS_PER_TOKEN": "8",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "SILENCE_SECONDS": "60",
        "TTS_ENGINE": "espeak",
    }
    # resumable=true only for the session id it announces (to find its batches);
    # vadEvents=true: noise gets no SpeechStarted either.
    url = f"{{}}/?token={raw_token}&detail=true&resumable=true&vadEvents=true"
    try:
        with run_daphne(env) as server:
            url = url.format(server.ws_url)
            noises = await asyncio.gather(
                *(stream(url, pcm(noise(name, SECONDS))) for name in sorted(NOISES))
            )
            speech = fixture_pcm("two_utterances.wav")
            spoken = await asyncio.gather(
                stream(url, speech),
                stream(url, mixed(speech, noise("pink", 8), snr_db=15)),
                stream(url, mixed(speech, noise("hum", 8), snr_db=15)),
            )
    finally:
        await receiver.stop()

    for name, (_, messages) in zip(sorted(NOISES), noises, strict=True):
        assert messages == [], name  # no final, and no partial either
    for _, messages in spoken:
        assert messages[0]["type"] == "SpeechStarted"  # before any transcript
        heard = _finals(messages)
        assert WEATHER in heard
        assert LIGHTS in heard
    answered = {d["session_id"] for d in receiver.documents}
    assert answered == {session for session, _ in spoken}
    noise_ids = [session for session, _ in noises]
    assert not await Transcript.objects.filter(session_id__in=noise_ids).aexists()
    ended = AudioSession.objects.filter(pk__in=noise_ids, close_code=1000)
    assert await ended.acount() == len(NOISES)


async def test_pocketsphinx_hears_no_word_in_noise(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "pocketsphinx", "OFFLINE_DECODER_PROCESSES": "1"}
    url = f"{{}}/?token={raw_token}&resumable=true&vadEvents=true"
    with run_daphne(env) as server:
        url = url.format(server.ws_url)
        results = await asyncio.gather(
            stream(url, pcm(noise("pink", SECONDS))),  # "thank", before the gate
            stream(url, pcm(noise("white", SECONDS))),
            stream(url, fixture_pcm("two_utterances.wav")),
        )
    pink, white, speech = (messages for _, messages in results)
    assert pink == white == []  # no SpeechStarted either
    assert "lights" in _finals(speech)
    assert [m for m in speech if m.get("type") == "SpeechStarted"]
