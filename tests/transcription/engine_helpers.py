"""Driving an engine's stream in tests: audio in chunk by chunk, every event out."""

import asyncio
import re

from tests.audio import chunks
from transcription.engines import SpeechToText

WAIT = 60  # bound on any one recognition; the fixtures decode in about a second


async def stream_all(stream: SpeechToText, audio: bytes, chunk: int = 1024) -> list:
    """Send the audio chunk by chunk, then END; every event up to the end."""

    async def collect():
        return [event async for event in stream.events()]

    collector = asyncio.create_task(collect())
    try:
        for piece in chunks(audio, chunk):
            await stream.send_audio(piece)
            await asyncio.sleep(0)  # let the decode task take turns, as a socket would
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
