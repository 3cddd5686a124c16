"""The audio browsers and phones send (webm, ogg-opus, mp4, flac, G.711), through a
real daphne to the offline engine (Whisper) and to AWS (the fake service)."""

import asyncio
import contextlib
import os

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.audio import chunks, encode, read_pcm
from tests.e2e.servers import drain, run_daphne
from tests.transcription.engine_helpers import LIGHTS, WEATHER, words
from tests.transcription.fake_transcribe import Play, running_fake
from transcription.models import AudioSession, SessionError

pytestmark = pytest.mark.django_db(transaction=True)

ENCODINGS = ["webm", "ogg-opus", "mp4", "flac", "mulaw", "alaw"]


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="pilar")
    return api_token_create(user=user, name="e2e-encodings")[1]


CLOSE_STREAM = '{"type": "CloseStream"}'


async def send(
    url: str, audio: bytes, size: int = 2048, end: str = "END_OF_STREAM"
) -> tuple[list[dict], int]:
    """`audio` in frames of `size` bytes, then `end`: every message and the close
    code."""
    async with connect(url) as ws:
        # A refusal (bad audio) may close the socket while frames are still sent.
        with contextlib.suppress(ConnectionClosed):
            for piece in chunks(audio, size):
                await ws.send(piece)
            await ws.send(end)
        messages = await drain(ws)
    return messages, ws.close_code


def finals(messages: list[dict]) -> list[str]:
    return [words(m["transcript"]) for m in messages if "transcript" in m]


@sync_to_async
def recorded() -> list[AudioSession]:
    return list(AudioSession.objects.order_by("started_at"))


@sync_to_async
def session_errors() -> list[tuple[str, str]]:
    return list(SessionError.objects.values_list("session__encoding", "kind"))


async def errors_recorded(count: int) -> None:
    """Recorded by daphne right after it closes the socket: wait, bounded."""
    async with asyncio.timeout(20):
        while len(await session_errors()) < count:  # noqa: ASYNC110 (daphne writes)
            await asyncio.sleep(0.05)


async def test_whisper_hears_every_encoding_and_refuses_what_does_not_decode(
    raw_token,
):
    pcm, rate = read_pcm("two_utterances.wav")
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        heard, metadata = {}, {}
        for encoding in ENCODINGS:
            # No sampleRate: G.711 is 8 kHz by default, a container says its own.
            messages, code = await send(
                f"{url}&encoding={encoding}",
                encode(pcm, rate, encoding),
                end=CLOSE_STREAM
                if encoding in ("webm", "ogg-opus")
                else "END_OF_STREAM",
            )
            assert code == 1000, messages
            heard[encoding] = finals(messages)
            if messages and messages[-1].get("type") == "Metadata":
                metadata[encoding] = messages[-1]["audio_seconds"]

        # Bytes that are no WebM: one clear error, 1008.
        messages, code = await send(f"{url}&encoding=webm", os.urandom(20000))
        # A container cannot be taken up mid-file: resumable needs a fixed byte rate.
        resumable, resumable_code = await send(
            f"{url}&encoding=ogg-opus&resumable=true", b""
        )
        await errors_recorded(2)
        output = server.output()

    assert heard == {encoding: [WEATHER, LIGHTS] for encoding in ENCODINGS}
    assert code == 1008
    assert messages == [
        {
            "error": "The audio could not be decoded as WebM (it does not begin as "
            "WebM streams do). Send the stream from its first byte (MediaRecorder's "
            "first chunk carries the header), or choose the encoding that matches it."
        }
    ]
    assert resumable_code == 1008
    assert resumable == [
        {
            "error": "resumable=true needs an encoding with a fixed byte rate (pcm, "
            "mulaw, alaw): ogg-opus is a container, whose stream cannot be resumed "
            "in the middle."
        }
    ]
    assert "Traceback" not in output

    sessions = await recorded()
    assert [(s.encoding, s.sample_rate) for s in sessions[:6]] == [
        ("webm", 16000),
        ("ogg-opus", 16000),
        ("mp4", 16000),
        ("flac", 16000),
        ("mulaw", 8000),
        ("alaw", 8000),
    ]
    # G.711 is counted by its bytes, a container by the seconds decoded from it
    # (whatever its bytes weigh); either is the fixture's length, and the end of
    # each utterance decoded is the clock of its final latency.
    seconds = len(pcm) / 2 / rate  # 7.11
    assert metadata == {
        "webm": pytest.approx(seconds, abs=0.1),
        "ogg-opus": pytest.approx(seconds, abs=0.1),
    }
    assert [s.audio_seconds for s in sessions[:6]] == [
        *[pytest.approx(seconds, abs=0.1)] * 4,
        *[pytest.approx(seconds, abs=0.01)] * 2,
    ]
    assert all(s.audio_bytes < 2 * len(pcm) / 3 for s in sessions[:4])  # compressed
    assert all(s.final_latency_max is not None for s in sessions[:6])
    assert sorted(await session_errors()) == [
        ("ogg-opus", "parameters"),
        ("webm", "audio"),
    ]


@pytest.fixture
def aws_server(transactional_db, tmp_path):
    with (
        running_fake(tmp_path) as fake,
        run_daphne({"TRANSCRIPTION_ENGINE": "aws", **fake.env}) as server,
    ):
        server.fake = fake
        yield server


async def test_aws_gets_pcm_for_webm(aws_server, raw_token):
    pcm, rate = read_pcm("two_utterances.wav")
    messages, code = await send(
        f"{aws_server.ws_url}/?token={raw_token}&encoding=webm",
        encode(pcm, rate, "webm"),
    )
    assert code == 1000, messages
    heard = finals(messages)
    assert len(heard) == 2
    assert "weather is nice today" in heard[0]
    assert "turn on the lights" in heard[1]
    (received,) = aws_server.fake.received
    assert received.headers["x-amzn-transcribe-media-encoding"] == "pcm"
    assert received.headers["x-amzn-transcribe-sample-rate"] == "16000"
    assert received.bad_envelopes == 0
    assert abs(received.audio_bytes - len(pcm)) < 0.05 * 32000  # all of it


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
async def test_aws_gets_g711_as_pcm_at_8_khz(aws_server, raw_token, encoding):
    pcm, rate = read_pcm("two_utterances.wav")
    g711 = encode(pcm, rate, encoding)
    messages, code = await send(
        f"{aws_server.ws_url}/?token={raw_token}&encoding={encoding}", g711, 160
    )
    assert code == 1000, messages
    # The fake's pocketsphinx hears telephone audio badly; what it got is the point.
    assert len(finals(messages)) == 2
    (received,) = aws_server.fake.received
    assert received.headers["x-amzn-transcribe-media-encoding"] == "pcm"
    assert received.headers["x-amzn-transcribe-sample-rate"] == "8000"
    assert received.audio_bytes == 2 * len(g711)  # every sample, 16-bit


async def test_aws_gets_ogg_opus_as_it_came(aws_server, raw_token):
    pcm, rate = read_pcm("hello_world.wav")
    ogg = encode(pcm, rate, "ogg-opus")
    aws_server.fake.play = Play(script=[("hello world", False)])
    messages, code = await send(
        f"{aws_server.ws_url}/?token={raw_token}&encoding=ogg-opus&sampleRate=48000",
        ogg,
    )
    assert code == 1000
    assert finals(messages) == ["hello world"]
    (received,) = aws_server.fake.received
    assert received.headers["x-amzn-transcribe-media-encoding"] == "ogg-opus"
    assert received.headers["x-amzn-transcribe-sample-rate"] == "48000"
    assert received.audio_bytes == len(ogg)  # passed through, byte for byte


async def test_aws_refuses_a_corrupt_stream_before_sending_it(aws_server, raw_token):
    messages, code = await send(
        f"{aws_server.ws_url}/?token={raw_token}&encoding=mp4", os.urandom(8000)
    )
    assert code == 1008
    assert messages[-1]["error"].startswith("The audio could not be decoded as MP4 (")
    (received,) = aws_server.fake.received
    assert received.audio_bytes == 0

    await errors_recorded(1)
    assert await session_errors() == [("mp4", "audio")]
