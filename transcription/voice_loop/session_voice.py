"""The consumer's side of the voice loop: one session's batches and their replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from channels.db import database_sync_to_async
from django.conf import settings

from transcription import services
from transcription.models import Transcript
from transcription.runtime import worker_runner
from transcription.voice_loop.receiver import exchange_budget, receiver_config
from transcription.voice_loop.replies import session_group


class SessionVoice:
    """Joins the session's reply group, tracks which batches still owe a reply,
    and at END_OF_STREAM sends the last batch at once and waits (bounded) for it."""

    def __init__(self, *, session_id: uuid.UUID, channel_layer, channel_name: str):
        self.session_id = session_id
        self.group = session_group(session_id)
        self.channel_layer = channel_layer
        self.channel_name = channel_name
        self.silence_seconds = settings.SILENCE_SECONDS
        self.waiting: set[str] = set()
        self.answered = asyncio.Event()

    @classmethod
    async def join(
        cls, *, session_id: uuid.UUID, channel_layer, channel_name: str
    ) -> SessionVoice | None:
        """The session's voice loop, or None when no receiver is configured."""
        if receiver_config() is None:
            return None
        voice = cls(
            session_id=session_id,
            channel_layer=channel_layer,
            channel_name=channel_name,
        )
        await channel_layer.group_add(voice.group, channel_name)
        worker_runner.ensure_in_process()
        return voice

    def final_stored(self, transcript: Transcript) -> None:
        if transcript.batch is not None:
            self.waiting.add(str(transcript.batch.batch_id))

    def reply_message(self, event: dict) -> str | None:
        """The `server_response` for a worker's reply event (None: nothing to say)."""
        self.waiting.discard(event["batch_id"])
        self.answered.set()
        if not event.get("message"):
            return None
        return json.dumps(
            {
                "type": "server_response",
                "message": event["message"],
                "audio": event.get("audio"),
                "batch_id": event["batch_id"],
            }
        )

    async def flush_and_wait(self, until: float | None = None) -> None:
        """Send the open batch now; wait for replies, at most one exchange + TTS
        (or until `until`, loop time, if sooner)."""
        if not self.waiting:
            return
        await database_sync_to_async(services.batch_flush)(session_id=self.session_id)
        worker_runner.wake_in_process()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + exchange_budget() + 2.0
        if until is not None:
            deadline = min(deadline, until)
        while self.waiting and (left := deadline - loop.time()) > 0:
            self.answered.clear()
            with contextlib.suppress(TimeoutError):  # (not wait_for: see consumers)
                async with asyncio.timeout(left):
                    await self.answered.wait()

    async def leave(self) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)
