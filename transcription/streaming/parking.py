"""A resumable session's life without its socket: parked, resumed, handed over.

A resumable session (resumable=true) outlives its socket for RESUME_SECONDS: a
dropped socket parks it (`Parking.park`), a resume attaches the new socket and
replays the numbered messages after the client's seq (`Parking.resume`); another
server is handed it (`Parking.hand_over`) or takes it over from its record
(`Parking.continue_here`; see `streaming.resume`). Its finals and replies are
numbered here (`next_seq`, `send_numbered`, under one lock so seqs go out in order)
and the last MAX_REPLAY_MESSAGES are kept for a replay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer
from django.conf import settings

from transcription import services
from transcription.channel_layer import LAYER_ERRORS, layer_health
from transcription.db import db_call
from transcription.runtime import shutdown
from transcription.streaming import protocol
from transcription.voice_loop.replies import REPLY_EVENT

if TYPE_CHECKING:
    from transcription.engines import StreamParams
    from transcription.streaming.session import StreamSession, Transport

logger = logging.getLogger(__name__)

# Numbered messages (finals, replies) a resumable session can replay.
MAX_REPLAY_MESSAGES = 1000
HAND_OVER = "session.hand_over"  # another server resumes a parked session
HANDED_OVER = "session.handed_over"
RESUMED_ELSEWHERE = "Resumed on another connection."  # the old socket's close reason

# This process's resumable sessions that have not ended, by id.
_resumable: dict[uuid.UUID, StreamSession] = {}


def resumable_session(session_id: uuid.UUID) -> StreamSession | None:
    """This process's resumable session `session_id`, if it has not ended."""
    return _resumable.get(session_id)


def resume_group(session_id: uuid.UUID) -> str:
    """The group a parked session listens on for a hand-over."""
    return f"resume.{session_id.hex}"


class Parking:
    """What a session keeps to be resumed: its numbered messages, its parked task,
    its place in this process's list of resumable sessions."""

    def __init__(self, session: StreamSession) -> None:
        self.session = session
        self.seq = 0  # the last `seq` sent (finals and replies, resumable only)
        self.replay: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=MAX_REPLAY_MESSAGES
        )
        self.numbering = asyncio.Lock()  # seqs go out in order
        self.parked: asyncio.Task | None = None  # lost its socket, may be resumed
        self.resumed = asyncio.Event()  # given a socket again since it was parked
        self._background: set[asyncio.Task] = set()

    @property
    def is_parked(self) -> bool:
        """Parked now (also while its end waits for the client)."""
        return self.parked is not None and not self.parked.done()

    # --- numbered messages --------------------------------------------------------

    def next_seq(self) -> int | None:
        if not self.session.resumable:
            return None
        self.seq += 1
        return self.seq

    async def send_numbered(self, message: str, seq: int | None) -> None:
        if seq is not None:
            message = protocol.numbered(message, seq)
            self.replay.append((seq, message))
        await self.session.send(message)

    def store_reply_seq(self, batch_id: str, seq: int) -> None:
        """In the background (the session goes on): a resume elsewhere reads it."""
        self._in_background(
            db_call(services.batch_reply_numbered, batch_id=batch_id, seq=seq)
        )

    def _in_background(self, write: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await write
            except Exception:  # the seq is lost: a resume elsewhere resends it
                logger.warning(
                    "session %s: reply seq not stored",
                    self.session.session_id,
                    exc_info=True,
                )

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- listed in this process, heard by other servers ---------------------------

    async def announce(self, transport: Transport) -> None:
        """Opened resumable: listed in this process, {"type": "session"} to the
        client, a hand-over heard on `transport`'s channel."""
        session = self.session
        assert session.session_id is not None  # noqa: S101 (recorded at open)
        _resumable[session.session_id] = session
        await session.send(
            protocol.session_message(session.session_id, settings.RESUME_SECONDS)
        )
        await self.join_resume_group(transport)

    async def join_resume_group(self, transport: Transport) -> None:
        """Another server's resume reaches this session over `transport`'s channel
        too (a dropped socket this server has not noticed yet)."""
        session_id = self.session.session_id
        assert session_id is not None  # noqa: S101 (it streams)
        layer = transport.channel_layer
        if layer is None:
            return
        try:
            await layer.group_add(  # type: ignore[attr-defined]
                resume_group(session_id), transport.channel_name
            )
        except LAYER_ERRORS as exc:  # parked, it listens on a channel of its own
            layer_health.failed("group_add", exc)

    def forget(self) -> None:
        """Leave the resumable list and stop waiting to be resumed (idempotent)."""
        session_id = self.session.session_id
        if session_id is not None and _resumable.get(session_id) is self.session:
            del _resumable[session_id]
        if self.parked is not None and self.parked is not asyncio.current_task():
            self.parked.cancel()

    # --- parked: the socket dropped, the session waits to be resumed ------------

    def may_park(self) -> bool:
        """Resumable, and neither closed yet (it may have concluded: its last
        messages then wait for the client), nor dropped by the server, nor on a
        server that shuts down."""
        session = self.session
        return (
            session.resumable
            and session.supervisor is not None
            and not session.closed
            and not session.transport_closed
            and session.lost_because is None
            and not shutdown.draining()
        )

    async def until_resumed(self) -> None:
        """A parked session that concluded waits for its client (its parked task
        ends it as a client that left when RESUME_SECONDS pass)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.RESUME_SECONDS):
                await self.resumed.wait()

    async def park(self, code: int) -> None:
        self.resumed.clear()
        if self.session.voice is not None:
            await self.session.voice.leave()
        logger.info(
            "session %s: socket lost (%s): resumable for %g s",
            self.session.session_id,
            code,
            settings.RESUME_SECONDS,
        )
        self.parked = asyncio.create_task(self._parked(code))

    async def _parked(self, code: int) -> None:
        """Replies and a hand-over arrive on a channel of the session's own while
        it has no socket; after RESUME_SECONDS it ends as if not resumable."""
        session = self.session
        layer = get_channel_layer()
        channel = None
        try:
            async with asyncio.timeout(settings.RESUME_SECONDS):
                try:
                    if layer is not None:
                        channel = await layer.new_channel()
                        await self._listen(layer, channel)
                        return  # handed over
                except LAYER_ERRORS as exc:  # a resume reads replies from the DB
                    layer_health.failed("receive", exc)
                await asyncio.Event().wait()  # until the window is over
        except TimeoutError:
            if session.transport is None and not session.closed:
                logger.info("session %s: not resumed in time", session.session_id)
                await session.end_lost(code)
        finally:
            if layer is not None and channel is not None and session.session_id:
                with contextlib.suppress(*LAYER_ERRORS):
                    await layer.group_discard(resume_group(session.session_id), channel)

    async def _listen(self, layer, channel: str) -> None:
        session = self.session
        assert session.session_id is not None  # noqa: S101 (it streamed)
        await layer.group_add(resume_group(session.session_id), channel)
        if session.voice is not None:
            await session.voice.join(layer, channel)
        while True:
            message = await layer.receive(channel)
            if message.get("type") == REPLY_EVENT:
                await session.reply(message)
            elif message.get("type") == HAND_OVER:
                self.parked = None  # not cancelled by forget(): this task
                await self.hand_over(message["reply_to"])
                return

    # --- moved: to another socket, to another server, from another server ----------

    async def hand_over(self, reply_to: str) -> None:
        """Another server resumes this session: stop here without recording an
        end (the record is the other server's now), then say so on `reply_to`."""
        session = self.session
        logger.info("session %s: handed over to another server", session.session_id)
        transport, session.transport = session.transport, None
        if transport is not None:  # its drop was not noticed yet
            with contextlib.suppress(Exception):
                await transport.close(protocol.CLOSE_NORMAL, RESUMED_ELSEWHERE)
        await session.stop()
        # The seqs of replies sent are stored before the other server reads them.
        await asyncio.gather(*self._background, return_exceptions=True)
        layer = get_channel_layer()
        if layer is not None:
            await layer.send(reply_to, {"type": HANDED_OVER, "seq": self.seq})

    async def resume(self, transport: Transport, after: int) -> None:
        """The client is back: {"type": "resumed"}, the numbered messages after
        `after`, then what the session sends next."""
        session = self.session
        assert session.session_id is not None  # noqa: S101 (it streamed)
        old, session.transport = session.transport, None
        if self.parked is not None:
            self.parked.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.parked
            self.parked = None
        if old is not None:  # its drop was not noticed yet: it is not the session's
            with contextlib.suppress(Exception):
                await old.close(protocol.CLOSE_NORMAL, RESUMED_ELSEWHERE)
        session.pending.clear()  # partials, and numbered messages replayed below
        logger.info("session %s: resumed after seq %d", session.session_id, after)
        await transport.send_text(
            protocol.resumed_message(
                session.session_id, after, session.record.audio_seconds
            )
        )
        for seq, text in list(self.replay):
            if seq > after:
                await transport.send_text(text)
        session.clock.last_audio = asyncio.get_running_loop().time()
        session.wake_watch.set()
        await session.attach(transport)
        await self.join_resume_group(transport)
        self.resumed.set()
        if session.voice is not None:
            await session.voice.pick_up_stored()  # any reply missed while moving

    async def continue_here(
        self,
        transport: Transport,
        *,
        params: StreamParams,
        after: int,
        replay: list[str],
        unsent: list[str],
        audio_seconds: float,
    ) -> None:
        """Take over a session another server served (its record is this
        process's now): the stored messages after `after`, then a fresh engine
        stream; replies still owed come as they are stored."""
        session = self.session
        assert session.session_id is not None  # noqa: S101 (the caller set it)
        session.resumable = True
        session.transport = transport
        await transport.send_text(
            protocol.resumed_message(session.session_id, after, audio_seconds)
        )
        for text in replay:
            await transport.send_text(text)
        await session.start(params)
        if session.streams_audio:
            _resumable[session.session_id] = session
            await self.join_resume_group(transport)
        if session.voice is not None:
            session.voice.waiting.update(unsent)
            await session.voice.pick_up_stored()
