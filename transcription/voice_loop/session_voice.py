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
from transcription.engines import StreamParams
from transcription.models import Transcript
from transcription.voice_loop.receiver import exchange_budget, receiver_config
from transcription.voice_loop.replies import (
    REPLY_EVENT,
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
        self.barge_in = False  # bargeIn=true (docs/protocol.md §11)
        self.waiting: set[str] = set()
        # Barge-in: the batch the latest final joined (still open, or due once its
        # silence is over), when that final came (loop time), and the batches whose
        # reply the person spoke over: nothing more of those is relayed.
        self.latest: str | None = None
        self.latest_at = 0.0
        self.cut_short: set[str] = set()
        self.interrupting: set[asyncio.Task] = set()
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
        params: StreamParams | None = None,
    ) -> SessionVoice | None:
        """The session's voice loop, or None when no receiver is configured."""
        if receiver_config() is None:
            return None
        voice = cls(session_id=session_id, wake=wake, deliver=deliver)
        if params is not None:
            voice.barge_in = params.barge_in
            if params.silence_ms is not None:
                voice.silence_seconds = params.silence_ms / 1000
        return voice

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
        if transcript.batch is None:
            return
        batch_id = str(transcript.batch.batch_id)
        if self.barge_in:
            # A final that opened a new batch: the earlier ones were taken, and
            # whatever of their replies is still to come is spoken over.
            self._interrupt(self.waiting - {batch_id})
            self.latest = batch_id
            self.latest_at = asyncio.get_running_loop().time()
        self.waiting.add(batch_id)

    def heard_partial(self) -> None:
        """Barge-in: a partial of a new utterance. The batch of the latest final is
        spared while its silence lasts (the utterance joins it)."""
        if not self.barge_in or not self.waiting:
            return
        spared = set()
        quiet = asyncio.get_running_loop().time() - self.latest_at
        if self.latest is not None and quiet < self.silence_seconds:
            spared.add(self.latest)
        self._interrupt(self.waiting - spared - self.cut_short)

    def _interrupt(self, batch_ids: set[str]) -> None:
        """Relay nothing more of these replies, at once; record them interrupted
        (the worker stops), then tell the client: `reply_cancelled`."""
        for batch_id in batch_ids - self.cut_short:
            self.cut_short.add(batch_id)
            task = asyncio.create_task(self._record_interrupted(batch_id))
            self.interrupting.add(task)
            task.add_done_callback(self.interrupting.discard)

    async def _record_interrupted(self, batch_id: str) -> None:
        try:
            cut = await db_call(services.batch_interrupt, batch_id=batch_id)
        except DATABASE_AWAY as exc:
            # Not recorded: its worker sends the rest, which is not relayed.
            logger.warning(
                "session %s: batch %s: barge-in not recorded (%s)",
                self.session_id,
                batch_id,
                exc.__class__.__name__,
            )
            cut = True
        if not cut:  # still open: the new speech joins it
            self.cut_short.discard(batch_id)
            return
        if batch_id in self.waiting:
            await self.deliver(
                {
                    "type": REPLY_EVENT,
                    "batch_id": batch_id,
                    "message": "",
                    "audio": None,
                    "error": "",
                    "cancelled": True,
                }
            )

    def reply_message(self, event: ReplyEvent) -> str | None:
        """The `server_response` for a worker's reply event (None: nothing to say,
        or said already: pushed and picked up both); a piece of a streamed reply
        with its `seq` and `last`; `reply_cancelled` for one spoken over."""
        batch_id = event["batch_id"]
        if batch_id not in self.waiting:
            return None
        if event.get("cancelled"):
            self.waiting.discard(batch_id)
            self.answered.set()
            return json.dumps({"type": "reply_cancelled", "batch_id": batch_id})
        if batch_id in self.cut_short:
            return None  # spoken over: reply_cancelled follows
        piece = "seq" in event
        if not piece or event.get("last"):
            self.waiting.discard(batch_id)
            self.answered.set()
        if not event.get("message") and not (piece and event.get("last")):
            return None
        message: dict[str, object] = {
            "type": "server_response",
            "message": event["message"],
            "audio": event.get("audio"),
            "batch_id": batch_id,
        }
        if piece:
            message["seq"] = event["seq"]
            message["last"] = bool(event.get("last"))
        return json.dumps(message)

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
