"""A session's side of the voice loop: its reply group, the batches owing a reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from transcription import selectors, services
from transcription.channel_layer import LAYER_ERRORS, layer_health
from transcription.db import DATABASE_AWAY, db_call
from transcription.models import Transcript
from transcription.voice_loop.receiver import exchange_budget, receiver_config
from transcription.voice_loop.replies import (
    ReplyEvent,
    session_group,
    stored_reply_event,
)

logger = logging.getLogger(__name__)

# How often a session waiting for its last replies while the channel layer is away
# looks for them in the database itself.
STORED_REPLY_POLL_SECONDS = 1.0


class SessionVoice:
    """Tracks which batches still owe a reply, joins the session's reply group with
    its transport's channel, and at END_OF_STREAM sends the last batch at once and
    waits (bounded) for its reply.

    The channel layer may fail (Redis away): the session goes on. A failed join, or
    a transport that lost its layer, starts `_rejoin`: once the layer answers, the
    group is joined again and the replies stored meanwhile are read from the
    database and handed to `deliver`, as if pushed. A reply is sent once, whichever
    way it came.
    """

    def __init__(
        self,
        *,
        session_id: uuid.UUID,
        wake: Callable[[], None],
        deliver: Callable[[ReplyEvent], Awaitable[None]],
    ):
        self.session_id = session_id
        self.group = session_group(session_id)
        self.wake = wake  # tells this process's worker that a batch is due now
        self.deliver = deliver  # a reply picked up from the database
        self.silence_seconds = settings.SILENCE_SECONDS
        self.waiting: set[str] = set()
        self.answered = asyncio.Event()
        self.joined: tuple[Any, str] | None = None  # (channel layer, channel)
        self.rejoining: asyncio.Task | None = None

    @classmethod
    def for_session(
        cls,
        *,
        session_id: uuid.UUID,
        wake: Callable[[], None],
        deliver: Callable[[ReplyEvent], Awaitable[None]],
    ) -> SessionVoice | None:
        """The session's voice loop, or None when no receiver is configured."""
        if receiver_config() is None:
            return None
        return cls(session_id=session_id, wake=wake, deliver=deliver)

    async def join(self, channel_layer, channel_name: str) -> None:
        """Replies go to this channel (a transport's) from now on; while the layer
        is away, from once it answers again."""
        await self.leave()
        self.joined = (channel_layer, channel_name)
        try:
            await channel_layer.group_add(self.group, channel_name)
        except LAYER_ERRORS as exc:
            layer_health.failed("group_add", exc)
            self.rejoin_later()
        else:
            layer_health.answered()

    def rejoin_later(self) -> None:
        """The layer failed: the group may be gone (a restarted Redis keeps
        nothing), so join it again once the layer answers."""
        if self.joined is not None and self.rejoining is None:
            self.rejoining = asyncio.create_task(self._rejoin())

    async def _rejoin(self) -> None:
        try:
            while self.joined is not None:
                await layer_health.until_back()
                channel_layer, channel_name = self.joined
                try:
                    await channel_layer.group_add(self.group, channel_name)
                except LAYER_ERRORS as exc:
                    layer_health.failed("group_add", exc)  # probed again
                    continue
                layer_health.answered()
                await self.pick_up_stored()
                return
        finally:
            if self.rejoining is asyncio.current_task():
                self.rejoining = None

    async def pick_up_stored(self) -> None:
        """The replies stored for batches still owing one, delivered here (those
        the worker could not push while the layer was away)."""
        if not self.waiting:
            return
        try:
            batches = await db_call(
                selectors.batch_outcomes, batch_ids=set(self.waiting)
            )
        except DATABASE_AWAY as exc:  # away too: the next look finds them
            logger.warning(
                "session %s: stored replies not read (%s)",
                self.session_id,
                exc.__class__.__name__,
            )
            return
        for batch in batches:
            await self.deliver(stored_reply_event(batch))

    async def leave(self) -> None:
        if self.rejoining is not None:
            self.rejoining.cancel()
            self.rejoining = None
        if self.joined is not None:
            channel_layer, channel_name = self.joined
            self.joined = None
            try:
                await channel_layer.group_discard(self.group, channel_name)
            except LAYER_ERRORS as exc:
                # The membership expires with the layer's group expiry.
                layer_health.failed("group_discard", exc)

    def final_stored(self, transcript: Transcript) -> None:
        if transcript.batch is not None:
            self.waiting.add(str(transcript.batch.batch_id))

    def reply_message(self, event: ReplyEvent) -> str | None:
        """The `server_response` for a worker's reply event (None: nothing to say,
        or said already: pushed and picked up both)."""
        if event["batch_id"] not in self.waiting:
            return None
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
        try:
            await db_call(services.batch_flush, session_id=self.session_id)
        except DATABASE_AWAY:
            # No worker can answer before the database does: the batch goes when
            # its silence is over, and its reply is stored.
            logger.warning("session %s: last batch not sent now", self.session_id)
            return
        self.wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + exchange_budget() + 2.0
        if until is not None:
            deadline = min(deadline, until)
        while self.waiting and (left := deadline - loop.time()) > 0:
            self.answered.clear()
            if self.rejoining is not None:  # the layer is away: no push will come
                left = min(left, STORED_REPLY_POLL_SECONDS)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that meets the event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.answered.wait()
            if self.waiting and self.rejoining is not None:
                await self.pick_up_stored()
