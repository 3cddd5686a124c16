"""One audio session's life, apart from the socket that carries it.

A `StreamSession` owns what a session is: its admission, record, engine stream,
open batch and replies (`SessionVoice`), timers, latency and the sequence of the
messages it sends. It talks to its client through a `Transport` (the consumer), which
it may lose and be given again (`detach()`, `attach()`): what it sends meanwhile waits
for the next transport.

A resumable session (resumable=true) outlives its socket for RESUME_SECONDS: a
dropped socket parks it (`transport_lost`) rather than ending it; what it keeps to
be resumed, numbered messages, parked task, resume and hand-over, is its
`Parking` (`streaming.parking`).

Its life is a small state machine, moved only by `_enter()`:
CONNECTING → STREAMING → FLUSHING (no more audio; the engine sends its last finals)
→ CLOSING → CLOSED, or CONNECTING → CLOSED when refused. Whatever ends it (the
engine's last event, an error, a timeout, revoked access, a bad frame) only
*concludes* it with a `Close` from the catalogue in `protocol`; one supervisor task
then stops the session's tasks and closes exactly once: the transport first, then
the record, so a failing database never leaves a socket open.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import uuid
from typing import Protocol

from django.conf import settings

from transcription import metrics
from transcription.engines import (
    CountsAudio,
    EngineError,
    LanguageIdentified,
    SpeechStarted,
    SpeechToText,
    StreamEvent,
    TranscriptEvent,
    TranscriptionEngine,
    audio_backlog_limit,
    has_words,
    language_id,
)
from transcription.engines.transcode import DECODED_BYTES_PER_SECOND
from transcription.models import HEARTBEAT_SECONDS, Transcript
from transcription.runtime import capacity, shutdown, worker_runner
from transcription.streaming import admission, control, protocol
from transcription.streaming.access import Handle, access_watch
from transcription.streaming.admission import Client
from transcription.streaming.latency import SessionLatency
from transcription.streaming.parking import Parking
from transcription.streaming.protocol import Close, ProtocolError, StreamParams
from transcription.streaming.records import DatabaseAway, SessionRecord, StoreFailed
from transcription.streaming.timers import SessionClock
from transcription.voice_loop.replies import ReplyEvent
from transcription.voice_loop.session_voice import SessionVoice

logger = logging.getLogger(__name__)

# Messages kept for the next transport while the session has none.
MAX_PENDING_MESSAGES = 1000


class State(enum.Enum):
    CONNECTING = "connecting"  # accepted; credentials and parameters being checked
    STREAMING = "streaming"  # audio flows to the engine
    FLUSHING = "flushing"  # no more audio; the engine sends what it still has
    CLOSING = "closing"  # concluded: replies awaited, socket closed, then recorded
    CLOSED = "closed"


# The moves `_enter()` allows; anything may end in CLOSED (the client left).
_NEXT = {
    State.CONNECTING: {State.STREAMING, State.CLOSING},
    State.STREAMING: {State.FLUSHING, State.CLOSING},
    State.FLUSHING: {State.CLOSING},
    State.CLOSING: set(),
    State.CLOSED: set(),
}


class Transport(Protocol):
    """What carries a session's messages to its client (the WebSocket consumer)."""

    channel_layer: object
    channel_name: str
    # Set when the socket is gone, where the server can pause reading it (daphne
    # with flow control); None where it cannot, so a full backlog is refused.
    gone: asyncio.Event | None

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str | None) -> None: ...


class _Concluded(Exception):
    """Raised inside the session's task group to stop its other tasks."""


class StreamSession:
    """One audio session: admitted, streamed to its engine, its events relayed."""

    def __init__(
        self, *, client: Client, query_string: bytes, engine: TranscriptionEngine
    ) -> None:
        self.client = client
        self.query_string = query_string
        self.engine = engine
        self.state = State.CONNECTING
        self.slot = capacity.reserve()  # before any await (see runtime.capacity)
        self.record = SessionRecord(engine=engine.name)
        self.clock = SessionClock()
        self.params = StreamParams()
        self.latency = SessionLatency(None)  # with the byte rate once streaming
        self.stream: SpeechToText | None = None
        self.voice: SessionVoice | None = None
        self.access: Handle | None = None  # revocation, expiry, logout
        self.supervisor: asyncio.Task | None = None
        self.transport: Transport | None = None
        self.pending: collections.deque[str] = collections.deque(
            maxlen=MAX_PENDING_MESSAGES
        )
        self.sent = 0  # the message sequence: messages sent so far
        self.resumable = False
        self.parking = Parking(self)  # numbered messages; parked, resumed
        self.transport_closed = False  # the session closed its socket: it ends
        self.waiting_for_room = False
        self.close_reason = ""
        self.metadata_wanted = False  # CloseStream: Metadata before the close
        self.conclusion: Close | None = None
        self.lost_because: Close | None = None  # the server dropped the socket
        self.concluded = asyncio.Event()
        self.wake_watch = asyncio.Event()
        shutdown.session_opened(self)

    @property
    def session_id(self) -> uuid.UUID | None:
        return self.record.session_id

    def _enter(self, state: State) -> None:
        """The one place a session changes state."""
        if state is not State.CLOSED and state not in _NEXT[self.state]:
            raise RuntimeError(f"session {self.session_id}: {self.state} → {state}")
        self.state = state

    @property
    def streams_audio(self) -> bool:
        return self.state is State.STREAMING

    @property
    def takes_frames(self) -> bool:
        return self.state is State.STREAMING or self.state is State.FLUSHING

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def can_resume(self) -> bool:
        """Parked (also while its end waits for the client), or streaming."""
        if self.state is State.CLOSED:
            return False
        if self.parking.is_parked:
            return True
        return self.takes_frames and self.conclusion is None

    # --- the transport ----------------------------------------------------------

    async def attach(self, transport: Transport) -> None:
        """Carry on over `transport`: what waited for it is sent first."""
        self.transport = transport
        if self.voice is not None:
            await self.voice.join(transport.channel_layer, transport.channel_name)
        while self.pending and self.transport is transport:
            await transport.send_text(self.pending.popleft())

    async def detach(self) -> None:
        """Lose the transport; the session goes on and keeps what it sends."""
        self.transport = None
        if self.voice is not None:
            await self.voice.leave()

    async def send(self, text: str) -> None:
        self.sent += 1
        if self.transport is None:
            self.pending.append(text)
        else:
            await self.transport.send_text(text)

    async def _close_transport(self, close: Close) -> None:
        self.transport_closed = True
        if self.transport is not None:
            reason = None if close.is_error else close.message or None
            await self.transport.close(close.code, reason)

    # --- CONNECTING ---------------------------------------------------------------

    async def open(self, transport: Transport) -> None:
        """Admit or refuse the session, then start streaming."""
        await self.attach(transport)
        if self.client.database_unavailable:
            await self._unavailable()
            return
        if (unauthenticated := self.client.auth_refusal()) is not None:
            await self._refuse_unauthenticated(unauthenticated)
            return
        params: StreamParams | None = None
        bad_parameters = None
        try:
            params = protocol.parse_params(self.query_string, self.engine.capabilities)
            self.resumable = protocol.resumable(self.query_string)
        except ProtocolError as exc:
            bad_parameters = protocol.bad_parameters(str(exc))
        try:
            await self.record.start(self.client, params, resumable=self.resumable)
        except DatabaseAway:
            await self._unavailable()
            return
        refusal = await admission.refusal(
            self.client, bad_parameters=bad_parameters, has_slot=self.slot is not None
        )
        if refusal is not None:
            await self._refuse(refusal)
            return
        assert params is not None  # noqa: S101 (bad parameters are a refusal)
        await self.start(params)
        if self.resumable and self.state is State.STREAMING:
            await self.parking.announce(transport)

    async def _unavailable(self) -> None:
        """The database is away: {"error"} and 1013 (try again later), no row."""
        close = protocol.DATABASE_UNAVAILABLE
        metrics.session_ended(
            close_code=close.code, engine=self.engine.name, audio_seconds=0.0
        )
        await self._close_now(close)

    async def _refuse_unauthenticated(self, refusal: Close) -> None:
        """CONNECTING → CLOSED before authentication: counted (the middleware's log,
        a metric), never stored, whatever the parameters. Over the failed-attempt
        limit the client waits first, holding no slot of the process."""
        self.release()
        metrics.AUTH_REFUSED.labels(
            reason=self.client.auth_method or "missing_token"
        ).inc()
        if self.client.throttled:
            await asyncio.sleep(settings.AUTH_FAILURE_DELAY_SECONDS)
        await self._close_now(refusal)

    async def _refuse(self, refusal: Close) -> None:
        """CONNECTING → CLOSED: one {"error"}, the close, then the record."""
        await self._close_now(refusal)
        await self.record.reject(refusal)

    async def _close_now(self, refusal: Close) -> None:
        self._enter(State.CLOSED)
        self.release()
        if refusal.message:
            await self.send(protocol.error_message(refusal.message))
        await self._close_transport(refusal)

    async def start(self, params: StreamParams) -> None:
        """CONNECTING → STREAMING: the engine's stream and the session's tasks."""
        assert self.session_id is not None  # noqa: S101 (recorded at open)
        self.params = params
        self.record.streaming(params)
        self.latency = SessionLatency(self.record.bytes_per_second)
        self.voice = SessionVoice.for_session(
            session_id=self.session_id,
            wake=worker_runner.wake_in_process,
            deliver=self.reply,
            params=params,
        )
        if self.voice is not None and self.transport is not None:
            await self.voice.join(
                self.transport.channel_layer, self.transport.channel_name
            )
            worker_runner.ensure_in_process()
        try:
            self.stream = await self.engine.open(
                dataclasses.replace(params, session_id=str(self.session_id))
            )
        except EngineError as exc:
            self.conclude(protocol.engine_error(exc))
        except Exception:
            logger.exception("session %s: the engine did not start", self.session_id)
            self.conclude(protocol.ENGINE_DID_NOT_START)
        else:
            if self.record.bytes_per_second is None and isinstance(
                self.stream, CountsAudio
            ):
                self._count_decoded(self.stream)
            self._enter(State.STREAMING)
            now = asyncio.get_running_loop().time()
            self.clock.started = self.clock.last_audio = now
            if self.client.grant is not None:
                self.access = access_watch().watch(
                    self.client.grant,
                    self._access_ended,
                    label=f"session {self.session_id}",
                )
            logger.info("session %s started (%s)", self.session_id, self.engine.name)
        self.supervisor = asyncio.create_task(self._supervise())

    def _count_decoded(self, stream: CountsAudio) -> None:
        """Compressed audio: the PCM its decoder hands the engine is the session's
        audio (its seconds) and the clock its final latency is measured by."""
        self.record.decoder = stream
        latency = self.latency = SessionLatency(DECODED_BYTES_PER_SECOND)
        loop = asyncio.get_running_loop()
        stream.on_decoded = lambda total: latency.on_audio(total, loop.time())

    # --- STREAMING: the client's frames ---------------------------------------------

    def frame_too_big(self, size: int) -> None:
        self.conclude(protocol.frame_too_big(size, settings.MAX_FRAME_BYTES))

    async def receive_text(self, text: str) -> None:
        if len(text) > settings.MAX_FRAME_BYTES:
            self.frame_too_big(len(text.encode()))
        elif text == protocol.END_OF_STREAM:
            await self.end_audio()
        elif (kind := protocol.control_type(text)) is not None:
            await control.handle(self, kind)
        else:
            self.conclude(protocol.UNEXPECTED_TEXT)

    async def receive_audio(self, chunk: bytes) -> None:
        if len(chunk) > settings.MAX_FRAME_BYTES:
            self.frame_too_big(len(chunk))  # servers without flow control's limits
            return
        stream = self.stream
        if self.state is not State.STREAMING or stream is None or not chunk:
            return  # an empty frame is no audio: it does not reset the idle timer
        if stream.backlog_full():
            gone = self.transport.gone if self.transport is not None else None
            if gone is None:
                self.conclude(self._backlog_full())
                return
            await self._wait_for_room(stream, chunk, gone)
        else:
            await stream.send_audio(chunk)
        self.record.audio_bytes += len(chunk)
        self.clock.last_audio = asyncio.get_running_loop().time()
        if self.record.decoder is None:  # else counted as it is decoded
            self.latency.on_audio(self.record.audio_bytes, self.clock.last_audio)

    async def _wait_for_room(
        self, stream: SpeechToText, chunk: bytes, gone: asyncio.Event
    ) -> None:
        """Flow control: while this waits, daphne stops reading the socket."""
        self.waiting_for_room = True
        sending = asyncio.ensure_future(stream.send_audio(chunk))
        disconnected = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait(
                {sending, disconnected}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self.waiting_for_room = False
            for task in (sending, disconnected):
                task.cancel()

    def _backlog_full(self) -> Close:
        limit = audio_backlog_limit(self.params)
        if rate := self.record.bytes_per_second:
            held = f"{limit / rate:g} seconds of audio"
            return protocol.backlog_full(held, "MAX_AUDIO_BACKLOG_SECONDS")
        return protocol.backlog_full(
            f"{limit} bytes of audio", "MAX_AUDIO_BACKLOG_BYTES"
        )

    async def end_audio(self, reason: str = "") -> None:
        """STREAMING → FLUSHING: no more audio; closes 1000 once the engine flushed."""
        if self.state is not State.STREAMING or self.stream is None:
            return
        self._enter(State.FLUSHING)
        self.close_reason = reason
        self.clock.progress_at = asyncio.get_running_loop().time()
        self.wake_watch.set()  # the flush bound starts now
        await self.stream.end_audio()

    async def drain(self, deadline: float) -> None:
        """The server shuts down: no more audio; what the engine still has is sent
        until `deadline` (loop time), then {"error"} and 1001 (`GOING_AWAY`)."""
        loop = asyncio.get_running_loop()
        # Still starting (its engine opening): drained once it streams. A short
        # poll, bounded by the deadline, rather than an event set on every way out
        # of CONNECTING.
        while self.state is State.CONNECTING and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.clock.drain_deadline = deadline
        if self.state is State.STREAMING:
            await self.end_audio()
        self.wake_watch.set()  # the deadline joins the timers
        if self.supervisor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self.supervisor), deadline - loop.time() + 1.0
                )

    def layer_lost(self, exc: BaseException) -> None:
        """The transport's channel layer failed: the session goes on; its replies
        come once the layer answers (or from the database)."""
        if self.voice is not None:
            self.voice.rejoin_later()

    async def reply(self, event: ReplyEvent) -> None:
        """A worker's reply to one of this session's batches."""
        async with self.parking.numbering:
            if not (self.voice and (message := self.voice.reply_message(event))):
                return
            seq = self.parking.next_seq()
            await self.parking.send_numbered(message, seq)
        if seq is not None:
            self.parking.store_reply_seq(event["batch_id"], seq)
        if not event.get("cancelled"):
            self.latency.on_reply(event["batch_id"], asyncio.get_running_loop().time())

    # --- the session's tasks ------------------------------------------------------

    async def _access_ended(self, reason: str) -> None:
        self.conclude(protocol.access_ended(reason))

    def conclude(self, close: Close) -> None:
        """Decide how the session ends (the first decision stands)."""
        if self.conclusion is None and self.state is not State.CLOSED:
            self.conclusion = close
            self.concluded.set()

    async def _supervise(self) -> None:
        """The session's tasks, supervised together, then its one close."""
        if self.stream is not None and self.conclusion is None:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._relay_events(self.stream))
                    group.create_task(self._watch_time())
                    group.create_task(self._heartbeat())
                    group.create_task(self._store_held())
                    # Awaited here, in the group's body, not by a task of the group:
                    # before Python 3.12.3 (gh-116720) a task that fails while the
                    # group exits leaves this task's cancellation counted, and the
                    # close below (an engine's aclose()) took it for a cancel of the
                    # session: no {"error"}, no close frame.
                    await self.concluded.wait()
                    raise _Concluded
            except* _Concluded:
                pass
            except* Exception:
                logger.exception("session %s: server error", self.session_id)
                self.conclude(protocol.SERVER_ERROR)
        await self._close_session()

    async def _relay_events(self, stream: SpeechToText) -> None:
        try:
            async for event in stream.events():
                await self._relay(event)
        except EngineError as exc:
            self.conclude(protocol.engine_error(exc))
        except StoreFailed:
            self.conclude(protocol.NOT_STORED)
        except Exception:
            logger.exception("session %s: engine failed", self.session_id)
            self.conclude(protocol.ENGINE_FAILED)
        else:
            if self.clock.drain_deadline is not None:
                self.conclude(protocol.GOING_AWAY)  # flushed: its finals are sent
            else:
                self.conclude(protocol.ended(self.close_reason))

    async def _relay(self, event: StreamEvent) -> None:
        if isinstance(event, LanguageIdentified):
            await self._language_identified(event)
            return
        now = asyncio.get_running_loop().time()
        if self.state is State.FLUSHING:
            self.clock.progress_at = now
        if isinstance(event, SpeechStarted):
            if self.params.vad_events:
                await self.send(protocol.speech_started_message(event.timestamp))
            return
        if not has_words(event.text):
            # Noise transcribed (". . ."), whatever the engine: no partial (nor
            # barge-in), no final, so nothing stored, batched or answered.
            return
        if event.is_partial:
            self.latency.on_event(now)
            if self.voice is not None:
                self.voice.heard_partial()  # barge-in
            if self.params.send_partials:
                await self.send(self._event_message(event))
        else:
            await self._relay_final(event)

    def _event_message(self, event: TranscriptEvent) -> str:
        return protocol.event_message(
            event, detail=self.params.detail, word_times=self.params.word_times
        )

    async def _language_identified(self, found: LanguageIdentified) -> None:
        """language=auto: stored (the batches of the finals that follow speak in
        it), then {"type": "language"} to the client, once."""
        logger.info(
            "session %s: language identified as %s (%.2f)",
            self.session_id,
            found.language,
            found.probability,
        )
        metrics.LANGUAGES_IDENTIFIED.labels(
            language=found.language,
            sure=str(found.probability >= language_id.CONFIDENT).lower(),
        ).inc()
        await self.record.language(found)
        await self.send(protocol.language_message(found))

    async def _relay_final(self, event: TranscriptEvent) -> None:
        """Stored first (or held while the database is away), then sent: a final
        the client has seen is never lost."""
        silence = self.voice.silence_seconds if self.voice is not None else None
        async with self.parking.numbering:
            seq = self.parking.next_seq()
            stored = await self.record.final(
                event, silence_seconds=silence, message_seq=seq
            )
            self._joined_batches(stored)
            await self.parking.send_numbered(self._event_message(event), seq)
        batch = (
            stored[-1].batch
            if stored and stored[-1].seq == self.record.finals
            else None
        )
        self.latency.on_final(
            event,
            asyncio.get_running_loop().time(),
            str(batch.batch_id) if batch is not None else None,
        )

    def _joined_batches(self, stored: list[Transcript]) -> None:
        if self.voice:
            for transcript in stored:
                self.voice.final_stored(transcript)

    async def _store_held(self) -> None:
        """While the database is away: the finals held are stored once it answers;
        after DB_OUTAGE_SECONDS the session ends (they are stored later)."""
        self.conclude(await self.record.store_held_while_away(self._joined_batches))

    async def _watch_time(self) -> None:
        """Idle timeout, longest session, and a bound on the final flush."""
        loop = asyncio.get_running_loop()
        while True:
            due = self.clock.due(
                loop.time(),
                flushing=self.state is State.FLUSHING,
                reading_paused=self.waiting_for_room,
            )
            if isinstance(due, Close):
                self.conclude(due)
                return
            if isinstance(due, str):
                await self.end_audio(due)  # then look again: now it flushes
                continue
            self.wake_watch.clear()
            pause = max(due - loop.time(), 0.05)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that meets the event (the task group would wait forever).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self.wake_watch.wait()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.record.heartbeat()

    # --- CLOSING → CLOSED ------------------------------------------------------------

    async def _close_session(self) -> None:
        """Exactly once: replies awaited, the transport closed, and only then the
        record (so a failed write never leaves the socket open); meanwhile the
        engine lets go of the session."""
        close = self.conclusion or protocol.ended(self.close_reason)
        self._enter(State.CLOSING)
        if self.access is not None:
            self.access.cancel()
        # Beside the close, not before it: an engine may take seconds to let go (a
        # decoder ends the call it is in first, behind other sessions' calls), and
        # the client hears why its session ended first. It starts at the next
        # await, which frees a sender waiting for room before replies are awaited.
        engine_closed = asyncio.create_task(self._close_engine())
        try:
            if close.kind == protocol.SHUTDOWN and self.voice:
                await self.voice.flush_and_wait(until=self.clock.drain_deadline)
            if close.is_error:
                await self.send(protocol.error_message(close.message))
            elif self.voice:
                await self.voice.flush_and_wait()
            if self.metadata_wanted and not close.is_error:
                await self.send(control.metadata(self))
            if self.parking.parked is not None and close.kind != protocol.SHUTDOWN:
                # Parked: what it says last reaches the client.
                await self.parking.until_resumed()
            await self._close_transport(close)
            self._enter(State.CLOSED)
            self.release()
            # A resumable session the server closes as it shuts down is let go of:
            # the client resumes it on another server (or this one, restarted).
            released = (
                self.resumable
                and close is protocol.GOING_AWAY
                and await self.record.release(close.code, close.message)
            )
            if not released:
                await self.record.end(
                    close.code,
                    close.message,
                    latency=self.latency.summary(),
                    error_kind=close.kind,
                    failed=close.is_failure,
                )
        finally:
            await engine_closed

    async def _close_engine(self) -> None:
        if self.stream is None:
            return
        try:
            await self.stream.aclose()  # also frees a sender waiting for room
        except Exception:
            logger.exception("session %s: the engine did not close", self.session_id)

    def outbound_overflow(self, pending: int) -> None:
        """The server dropped the socket: `pending` bytes waited for a client that
        did not read (MAX_OUTBOUND_BYTES); `transport_lost` follows."""
        self.lost_because = protocol.not_reading(pending, settings.MAX_OUTBOUND_BYTES)

    async def transport_lost(
        self, code: int, transport: Transport | None = None
    ) -> None:
        """The client's socket is gone: the session ends, what it said is kept; a
        resumable one is parked instead, until it is resumed or RESUME_SECONDS
        pass."""
        if transport is not None and transport is not self.transport:
            return  # a resume gave the session another socket already
        self.transport = None
        if self.parking.may_park():
            await self.parking.park(code)
            return
        await self.end_lost(code)

    async def end_lost(self, code: int) -> None:
        left_first = await self.stop()
        if left_first and (lost := self.lost_because) is not None:
            await self.record.end(
                code,
                lost.message,
                latency=self.latency.summary(),
                error_kind=lost.kind,
                failed=True,
            )
        elif left_first:
            await self.record.end(
                code, "client disconnected", latency=self.latency.summary()
            )
            logger.info("session %s: client left (%s)", self.session_id, code)

    async def stop(self) -> bool:
        """Stop the session's tasks and engine: True when it had not ended (it is
        this caller's to record)."""
        supervisor = self.supervisor
        # Not CLOSED: the client left first (mid-stream, or while its last finals
        # and replies were on their way), so the session stops here, and is
        # recorded here; CLOSED: its own close is recording it.
        left_first = supervisor is not None and self.state is not State.CLOSED
        if supervisor is not None:
            if left_first:
                supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        if self.access is not None:
            self.access.cancel()
        if self.stream is not None:
            await self.stream.aclose()
        if self.voice is not None:
            await self.voice.leave()
        self.release()
        self._enter(State.CLOSED)
        return left_first

    def release(self) -> None:
        """Give back the process's slot and leave the shutdown's and the resumable
        lists (idempotent)."""
        if self.slot is not None:
            self.slot.release()
        shutdown.session_gone(self)
        self.parking.forget()
