"""Text-to-speech by AWS Polly (boto3 `synthesize_speech`, MP3) on the "tts" pool.

Polly takes at most 3000 characters per request: longer replies are split at
sentence or word boundaries and the MP3 parts concatenated (MP3 frames join cleanly).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from transcription.executors import run_blocking
from transcription.voice_loop.tts import TtsError

POLLY_MAX_CHARS = 3000


def split_text(text: str, limit: int = POLLY_MAX_CHARS) -> list[str]:
    """Pieces of at most `limit` characters, cut after a sentence or at a space."""
    pieces = []
    text = " ".join(text.split())
    while len(text) > limit:
        window = text[: limit + 1]
        cut = max(window.rfind(end) for end in (". ", "! ", "? ")) + 1
        if cut <= 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def voice_for(
    language: str, voices: dict[str, str], default: str
) -> tuple[str, str | None]:
    """(VoiceId, Engine or None) for a session language: its entry in `voices`
    (POLLY_VOICES), else the first of the same language (es-MX: es-ES's), else
    `default` (POLLY_VOICE). `Voice:neural` names the engine."""
    tag = language.lower()
    by_tag = {key.lower(): value for key, value in voices.items()}
    choice = by_tag.get(tag)
    if choice is None:
        primary = tag.split("-")[0]
        choice = next(
            (v for k, v in by_tag.items() if k.split("-")[0] == primary), default
        )
    voice, _, engine = choice.partition(":")
    return voice, engine or None


class PollySpeech:
    """TTS_ENGINE=polly: POLLY_VOICES (per language), POLLY_VOICE, AWS_REGION,
    AWS_POLLY_ENDPOINT override."""

    name = "polly"

    def __init__(self) -> None:
        self.voice = settings.POLLY_VOICE
        self.voices = dict(settings.POLLY_VOICES)
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = boto3.session.Session().client(
                    "polly",
                    region_name=settings.AWS_REGION,
                    endpoint_url=settings.AWS_POLLY_ENDPOINT or None,
                    config=Config(
                        connect_timeout=5,
                        read_timeout=settings.TTS_TIMEOUT,
                        retries={"max_attempts": 2},
                    ),
                )
            return self._client

    def speak_mp3(self, text: str, language: str = "en-US") -> bytes:
        """Blocking: one request per piece of at most 3000 characters."""
        audio = bytearray()
        voice, engine = voice_for(language, self.voices, self.voice)
        extra = {"Engine": engine} if engine else {}
        try:
            for piece in split_text(text):
                response = self.client().synthesize_speech(
                    Text=piece, OutputFormat="mp3", VoiceId=voice, **extra
                )
                with response["AudioStream"] as stream:
                    audio += stream.read()
        except (BotoCoreError, ClientError) as exc:
            raise TtsError(f"Polly failed: {exc}") from exc
        return bytes(audio)

    async def synthesize_sentences(
        self, text: str, *, language: str
    ) -> AsyncIterator[bytes]:
        """One piece per request of at most 3000 characters."""
        for piece in split_text(text):
            yield await run_blocking("tts", self.speak_mp3, piece)

    async def synthesize(self, text: str, *, language: str) -> bytes:
        return await run_blocking("tts", self.speak_mp3, text, language)
