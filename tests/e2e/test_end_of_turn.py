"""End of turn through a real daphne with a real WebSocket client: the control
messages (KeepAlive, Finalize, CloseStream), endpointingMs and vadEvents, with the
echo engine (the protocol), pocketsphinx and Whisper (the endpointer), and AWS (its
fake service: the partial in flight made final)."""

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.audio import chunks, fixture_pcm
from tests.e2e.servers import drain, run_daphne
from tests.helpers import eventually
from tests.transcription.fake_transcribe import running_fake
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)

FRAME = b"\x01\x00" * 512  # 1024 bytes
POCKETSPHINX = {
    "TRANSCRIPTION_ENGINE": "pocketsphinx",
    "OFFLINE_DECODER_PROCESSES": "1",
}


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="erin")
    return api_token_create(user=user, name="e2e-eot")[1]


async def until_final(ws) -> tuple[list[dict], dict]:
    """The messages before the next final, and that final."""
    before = []
    while "transcript" not in (message := json.loads(await ws.recv())):
        before.append(message)
    return before, message


# --- the control messages (echo) -----------------------------------------------------


async def test_keep_alive_holds_an_idle_session_open(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "echo", "TRANSCRIPTION_IDLE_TIMEOUT": "1"}
    with run_daphne(env) as server:
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            for _ in range(10):  # 3 s without audio, three idle timeouts' worth
                await ws.send('{"type": "KeepAlive"}')
                await asyncio.sleep(0.3)
            await ws.send(FRAME)
            await ws.send("END_OF_STREAM")
            messages = await drain(ws)
            assert ws.close_code == 1000
            assert ws.close_reason == ""  # END_OF_STREAM's end, not "No audio for…"
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            await drain(ws)  # the same wait without KeepAlive: the idle close
            assert ws.close_reason == "No audio for 1 seconds."
    assert messages[-1] == {"transcript": "received 1024 bytes"}


async def test_close_stream_sends_metadata_before_the_close(echo_server, raw_token):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}") as ws:
        for _ in range(32):  # 1 s of 16 kHz audio
            await ws.send(FRAME)
        await ws.send('{"type": "CloseStream"}')
        messages = await drain(ws)
        assert ws.close_code == 1000
    *_, final, metadata = messages
    assert final == {"transcript": "received 32768 bytes"}
    session = await sync_to_async(AudioSession.objects.get)()
    assert metadata["type"] == "Metadata"
    assert uuid.UUID(metadata["session_id"]) == session.id
    assert metadata["audio_seconds"] == 1.024
    assert metadata["finals"] == 1
    assert metadata["duration"] >= 0
    assert set(metadata) == {
        "type",
        "session_id",
        "audio_seconds",
        "finals",
        "duration",
    }
    # Recorded right after the close (the client hears first): wait for it.
    await eventually(lambda: AudioSession.objects.filter(status="completed").exists())


async def test_finalize_gives_a_final_now_and_the_session_goes_on(
    echo_server, raw_token
):
    url = f"{echo_server.ws_url}/?token={raw_token}&sendPartials=false&vadEvents=true"
    async with connect(url) as ws:
        for _ in range(3):
            await ws.send(FRAME)
        await ws.send('{"type": "Finalize"}')
        before, first = await until_final(ws)
        for _ in range(2):
            await ws.send(FRAME)
        await ws.send("END_OF_STREAM")
        rest = await drain(ws)
        assert ws.close_code == 1000
    assert before == [{"type": "SpeechStarted", "timestamp": 0.0}]
    assert first == {"transcript": "received 3072 bytes"}
    assert rest == [
        {"type": "SpeechStarted", "timestamp": 0.096},  # 3072 bytes in
        {"transcript": "received 5120 bytes"},
    ]


async def test_a_seed_client_sees_no_speech_started(echo_server, raw_token):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}") as ws:
        await ws.send(FRAME)
        await ws.send("END_OF_STREAM")
        messages = await drain(ws)
    assert messages == [
        {"partialTranscript": "1024 bytes"},
        {"transcript": "received 1024 bytes"},
    ]


@pytest.mark.parametrize(
    "text", ['{"type": "Flush"}', "KeepAlive", '{"type": "keepalive"}', "{not json"]
)
async def test_other_text_is_refused_as_before(echo_server, raw_token, text):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}") as ws:
        await ws.send(FRAME)
        await ws.send(text)
        messages = await drain(ws)
        assert ws.close_code == 1008
    error = messages[-1]["error"]
    assert error.startswith("Unexpected text frame: send audio as binary frames")
    assert '{"type": "Finalize"}' in error


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (
            "endpointingMs=500",
            "Unsupported endpointingMs: this server's engine decides by itself",
        ),
        (
            "endpointingMs=50",
            "Unsupported endpointingMs 50: use an integer from 200 to 5000",
        ),
        ("vadEvents=1", "Invalid vadEvents '1': allowed values are"),
    ],
)
async def test_bad_end_of_turn_parameters_are_refused(
    echo_server, raw_token, query, error
):
    async with connect(f"{echo_server.ws_url}/?token={raw_token}&{query}") as ws:
        messages = await drain(ws)
        assert ws.close_code == 1008
    assert len(messages) == 1
    assert messages[0]["error"].startswith(error)


# --- the offline engines: the endpointer's pause, onsets, Finalize -------------------


async def stream_fixture(url: str) -> list[dict]:
    audio = fixture_pcm("two_utterances.wav")  # two sentences, ~2 s apart
    async with connect(url) as ws:
        for piece in chunks(audio):
            await ws.send(piece)
        await ws.send("END_OF_STREAM")
        messages = await drain(ws)
        assert ws.close_code == 1000
    return messages


async def test_endpointing_ms_decides_what_one_utterance_is(raw_token):
    with run_daphne(POCKETSPHINX) as server:
        url = f"{server.ws_url}/?token={raw_token}&sendPartials=false"
        by_default = await stream_fixture(url)
        joined = await stream_fixture(f"{url}&endpointingMs=3000&vadEvents=true")
    assert [m["transcript"] for m in by_default] == [
        "weather is nice today",
        "waste turn on the lights",
    ]
    # A pause longer than the fixture's gap: one utterance, one onset.
    assert joined[0] == {"type": "SpeechStarted", "timestamp": 0.21}
    (final,) = [m["transcript"] for m in joined if "transcript" in m]
    assert final.startswith("weather is nice today")
    assert final.endswith("the lights")
    assert len(joined) == 2


async def test_speech_started_comes_before_each_utterance(raw_token):
    with run_daphne(POCKETSPHINX) as server:
        messages = await stream_fixture(
            f"{server.ws_url}/?token={raw_token}&vadEvents=true"
        )
    kinds = [m.get("type") or next(iter(m)) for m in messages]
    assert kinds[0] == "SpeechStarted"
    assert kinds.count("SpeechStarted") == 2
    second = kinds.index("SpeechStarted", 1)
    assert kinds[second - 1] == "transcript"  # after the first sentence's final
    assert [m["timestamp"] for m in messages if "timestamp" in m] == [0.21, 3.78]


@pytest.mark.parametrize("engine", ["pocketsphinx", "whisper"])
async def test_finalize_ends_the_utterance_mid_sentence(raw_token, engine):
    audio = fixture_pcm("two_utterances.wav")
    cut = 32000  # one second: "weather is nice" said, "today" not yet
    env = {"TRANSCRIPTION_ENGINE": engine, "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env, ready_timeout=120) as server:
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            for piece in chunks(audio[:cut]):
                await ws.send(piece)
            await ws.send('{"type": "Finalize"}')
            _, first = await until_final(ws)
            for piece in chunks(audio[cut:]):
                await ws.send(piece)
            await ws.send('{"type": "CloseStream"}')
            rest = await drain(ws)
            assert ws.close_code == 1000
    assert "weather" in first["transcript"].lower()
    assert "today" not in first["transcript"].lower()
    finals = [m["transcript"] for m in rest if "transcript" in m]
    assert "today" in finals[0].lower()
    assert "lights" in finals[-1].lower()
    assert rest[-1]["type"] == "Metadata"
    assert rest[-1]["finals"] == 1 + len(finals)


# --- AWS (its fake service): the partial in flight made final ------------------------


async def test_aws_finalize_makes_the_partial_in_flight_final(raw_token, tmp_path):
    audio = fixture_pcm("two_utterances.wav")
    cut = int(1.2 * 32000)
    with (
        running_fake(tmp_path) as fake,
        run_daphne({"TRANSCRIPTION_ENGINE": "aws", **fake.env}) as server,
    ):
        url = f"{server.ws_url}/?token={raw_token}&vadEvents=true"
        async with connect(url) as ws:
            for piece in chunks(audio[:cut], 4096):
                await ws.send(piece)
            while "partialTranscript" not in (m := json.loads(await ws.recv())):
                assert m.get("type") == "SpeechStarted"
            await ws.send('{"type": "Finalize"}')
            before, first = await until_final(ws)
            for piece in chunks(audio[cut:], 4096):
                await ws.send(piece)
            await ws.send("END_OF_STREAM")
            rest = await drain(ws)
            assert ws.close_code == 1000
        refused = connect(f"{server.ws_url}/?token={raw_token}&endpointingMs=800")
        async with refused as ws:
            (error,) = await drain(ws)
            assert ws.close_code == 1008
    partials = [
        m["partialTranscript"] for m in [m, *before] if "partialTranscript" in m
    ]
    assert first["transcript"] == partials[-1]  # what the service had heard then
    finals = [m["transcript"] for m in rest if "transcript" in m]
    # The service's later words of that result come as a final of their own;
    # the words made final stand (the service may still have revised them).
    # (The partial in flight is wherever the service was: a word or three.)
    assert finals[0].endswith("today")
    spoken = 4  # words in the service's final for it: "weather is nice today"
    assert len(first["transcript"].split()) + len(finals[0].split()) == spoken
    assert finals[1:] == ["waste turn on the lights"]
    assert error["error"].startswith("Unsupported endpointingMs")
