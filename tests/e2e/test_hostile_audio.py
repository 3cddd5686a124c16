"""What compressed audio may cost a real daphne: the container streams a process
decodes at once (MAX_DECODER_THREADS), and a decompression bomb's audio."""

import asyncio
import contextlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import chunks, encode, encode_silence, read_pcm
from tests.e2e.servers import drain, run_daphne, scrape_until
from tests.helpers import eventually
from transcription.models import AudioSession, SessionError

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = ("voiceproject_decoder_threads", ())
REFUSED = ("voiceproject_decoders_refused_total", ())
BUSY = (
    "Server busy: it decodes as many compressed streams (webm, ogg-opus, mp4, flac) "
    "at once as it may (2, MAX_DECODER_THREADS). Try again later, or send "
    "encoding=pcm."
)


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="mallet")
    return api_token_create(user=user, name="e2e-hostile")[1]


async def threads_are(server, count: int) -> dict:
    """/metrics once the process's decoder threads are `count` (bounded)."""
    url = f"{server.http_url}/metrics"
    return await asyncio.to_thread(scrape_until, url, lambda f: f.get(THREADS) == count)


async def test_a_container_stream_over_max_decoder_threads_gets_1013_until_one_ends(
    raw_token,
):
    pcm, rate = read_pcm("hello_world.wav")
    webm = encode(pcm, rate, "webm")
    env = {
        "TRANSCRIPTION_ENGINE": "pocketsphinx",
        "OFFLINE_DECODER_PROCESSES": "1",
        "MAX_DECODER_THREADS": "2",
        "MAX_SESSIONS_PER_TOKEN": "10",  # records of ended sessions may lag
    }
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        async with (
            connect(f"{url}&encoding=webm") as first,
            connect(f"{url}&encoding=flac") as second,
        ):
            await first.send(webm[:4096])  # its header: the decoder waits for more
            await threads_are(server, 2)
            async with connect(f"{url}&encoding=ogg-opus") as third:
                refused = await drain(third)
            # PCM needs no decoder: it is served beside them.
            async with connect(url) as fourth:
                for piece in chunks(pcm):
                    await fourth.send(piece)
                await fourth.send("END_OF_STREAM")
                plain = await drain(fourth)

            await second.send("END_OF_STREAM")  # ends: its decoder's slot is freed
            await drain(second)
            await threads_are(server, 1)
            async with connect(f"{url}&encoding=webm") as fifth:
                with contextlib.suppress(ConnectionClosed):
                    for piece in chunks(webm[4096:], 4096):
                        await first.send(piece)
                    for piece in chunks(webm, 4096):
                        await fifth.send(piece)
                    await first.send("END_OF_STREAM")
                    await fifth.send("END_OF_STREAM")
                heard = [await drain(first), await drain(fifth)]
        figures = await threads_are(server, 0)
        output = server.output()

    assert third.close_code == 1013
    assert refused == [{"error": BUSY}]
    assert (fourth.close_code, plain[-1]) == (1000, {"transcript": "hello world"})
    assert (first.close_code, fifth.close_code) == (1000, 1000)
    assert [messages[-1] for messages in heard] == [{"transcript": "hello world"}] * 2
    assert figures[REFUSED] == 1
    assert "Traceback" not in output
    errors = await eventually(
        lambda: list(
            SessionError.objects.values_list("session__encoding", "close_code", "kind")
        )
    )
    assert errors == [("ogg-opus", 1013, "capacity")]


async def test_a_flac_bomb_decodes_no_more_than_max_session_seconds_of_audio(
    raw_token,
):
    """Ten minutes of silence in 0.1 MB of FLAC: the session ends (1000, its reason)
    once MAX_SESSION_SECONDS of audio was decoded, long before as much time."""
    bomb = encode_silence("flac", "flac", 600)
    env = {
        "TRANSCRIPTION_ENGINE": "pocketsphinx",
        "OFFLINE_DECODER_PROCESSES": "1",
        "MAX_SESSION_SECONDS": "60",
        "TRANSCRIPTION_IDLE_TIMEOUT": "120",  # all of it is sent at once
    }
    with run_daphne(env) as server:
        async with connect(f"{server.ws_url}/?token={raw_token}&encoding=flac") as ws:
            with contextlib.suppress(ConnectionClosed):
                for piece in chunks(bomb, 16384):
                    await ws.send(piece)
            messages = await drain(ws)
        await threads_are(server, 0)
        output = server.output()

    assert (ws.close_code, ws.close_reason) == (
        1000,
        "Session reached the longest allowed, 60 seconds of audio.",
    )
    assert not [m for m in messages if "error" in m]
    assert "Traceback" not in output
    (session,) = await eventually(
        lambda: list(AudioSession.objects.exclude(ended_at=None))
    )
    assert session.audio_seconds == 60.0
    assert session.status == AudioSession.Status.COMPLETED
