"""A session's side of the voice loop: its reply group, the batches owing a reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from transcription import services
from transcription.models import Transcript
from transcription.voice_loop.receiver import exchange_budget, receiver_config
from transcription.voice_loop.replies import ReplyEvent, session_group


class SessionVoice:
    """Tracks which batches still owe a reply, joins the session's reply group with
    its transport's channel, and at END_OF_STREAM sends the last batch at once and
    waits (bounded) for its reply."""

    def __init__(self, *, session_id: uuid.UUID, wake: Callable[[], None]):
        self.session_id = session_id
        self.group = session_group(session_id)
        self.wake = wake  # tells this process's worker that a batch is due now
        self.silence_seconds = settings.SILENCE_SECONDS
        self.waiting: set[str] = set()
        self.answered = asyncio.Event()
        self.joined: tuple[Any, str] | None = None  # (channel layer, channel)

    @classmethod
    def for_session(
        cls, *, session_id: uuid.UUID, wake: Callable[[], None]
    ) -> SessionVoice | None:
        """The session's voice loop, or None when no receiver is configured."""
        if receiver_config() is None:
            return None
        return cls(session_id=session_id, wake=wake)

    async def join(self, channel_layer, channel_name: str) -> None:
        """Replies go to this channel (a transport's) from now on."""
        await self.leave()
        await channel_layer.group_add(self.group, channel_name)
        self.joined = (channel_layer, channel_name)

    async def leave(self) -> None:
        if self.joined is not None:
            channel_layer, channel_name = self.joined
            self.joined = None
            await channel_layer.group_discard(self.group, channel_name)

    def final_stored(self, transcript: Transcript) -> None:
        if transcript.batch is not None:
            self.waiting.add(str(transcript.batch.batch_id))

    def reply_message(self, event: ReplyEvent) -> str | None:
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
        self.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + exchange_budget() + 2.0
        if until is not None:
            deadline = min(deadline, until)
        while self.waiting and (left := deadline - loop.time()) > 0:
            self.answered.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that meets the event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.answered.wait()
