"""Driving an engine's stream in tests: audio in chunk by chunk, every event out."""

import asyncio
import re

from asgiref.sync import sync_to_async

from accounts.services import api_token_revoke
from tests.audio import chunks
from tests.helpers import receive_until_close
from transcription.engines import SpeechToText
from transcription.models import SessionError

WAIT = 60  # bound on any one recognition; the fixtures decode in about a second


async def stream_all(
    stream: SpeechToText, audio: bytes, chunk: int = 1024, *, rate: int | None = None
) -> list:
    """Send the audio chunk by chunk (at real time for 16-bit `rate` Hz, if given),
    then END; every event up to the end."""

    async def collect():
        return [event async for event in stream.events()]

    collector = asyncio.create_task(collect())
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    try:
        for piece in chunks(audio, chunk):
            await stream.send_audio(piece)
            sent += len(piece)
            # Let the decode task take turns, as a socket would; or keep real time.
            due = start + sent / (rate * 2) if rate else 0.0
            await asyncio.sleep(max(0.0, due - loop.time()))
        await stream.end_audio()
        return await asyncio.wait_for(collector, WAIT)
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await stream.aclose()


WEATHER = "the weather is nice today"
LIGHTS = "please turn on the lights"


def words(text: str) -> str:
    """Lower case, punctuation dropped: Whisper writes "Hello world."."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


REVOKED = "Your API token was revoked."


async def revoked_mid_stream(ws, token, audio: bytes) -> None:
    """Through a consumer (`ws`, a WebsocketCommunicator): `audio` sent, `token`
    revoked as the admin does it; then {"error"} and 1008 must come within 5 s
    (ACCESS_CHECK_SECONDS short), recorded as the session's error."""
    for piece in chunks(audio):
        await ws.send_to(bytes_data=piece)
    await sync_to_async(api_token_revoke)(token=token)
    messages, close = await receive_until_close(ws, wait=5)
    assert messages[-1] == {"error": REVOKED}
    assert close["code"] == 1008
    rows = SessionError.objects.values_list("close_code", "kind", "message")
    assert [row async for row in rows] == [(1008, "revoked", REVOKED)]
