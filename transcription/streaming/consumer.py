"""The transcription WebSocket consumer (seed 004, SPEC §3).

Client → server: binary frames of audio in the declared encoding; the text frame
`END_OF_STREAM` when there is no more audio.
Server → client: `{"partialTranscript": "…"}` (when sendPartials=true),
`{"transcript": "…"}` for each final, `{"error": "…"}` right before any close that is
not a plain 1000. Closes: 1000 after END_OF_STREAM or a timeout, 1008 auth/parameters/
quota/revoked access/audio backlog (where reading cannot be paused), 1009 frame too
big, 1011 engine or server error, 1013 server at capacity or shutting down; 1001 when
the server shuts down mid-session (`drain()`: the finals it heard first).
With a receiver configured (SPEC §4), also `{"type": "server_response", "message":
"…", "audio": "<base64 MP3>" | null, "batch_id": "…"}` for each non-empty reply; at
END_OF_STREAM the last batch's reply comes before the 1000 close.

A session's life is a small state machine (`State`): CONNECTING → STREAMING →
FLUSHING (no more audio; the engine sends its last finals) → CLOSING → CLOSED, or
CONNECTING → CLOSED when refused. Whatever ends it (the engine's last event, an
error, a timeout, revoked access, a bad frame) only *concludes* it with a `Close`;
one supervisor task then stops the session's tasks and closes exactly once: the
socket first, then the record, so a failing database never leaves a socket open.
"""

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import uuid

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.middleware import AUTH_REFUSALS
from transcription import selectors, services
from transcription.engines import (
    EngineError,
    SpeechToText,
    audio_backlog_limit,
    get_engine,
)
from transcription.models import HEARTBEAT_SECONDS
from transcription.operations import metrics
from transcription.runtime import shutdown
from transcription.streaming import protocol
from transcription.streaming.access import Grant, Handle, access_watch
from transcription.streaming.dispatch import StreamingWebsocketConsumer
from transcription.streaming.latency import SessionLatency
from transcription.streaming.protocol import ProtocolError, StreamParams
from transcription.voice_loop.session_voice import SessionVoice
from voiceproject.server.flow_control import FLOW_CONTROL

logger = logging.getLogger(__name__)

# After END_OF_STREAM the engine must make progress: a file streamed faster than real
# time may take minutes to decode, so the bound restarts with every event.
FLUSH_TIMEOUT_SECONDS = 30.0


class State(enum.Enum):
    CONNECTING = "connecting"  # accepted; credentials and parameters being checked
    STREAMING = "streaming"  # audio flows to the engine
    FLUSHING = "flushing"  # no more audio; the engine sends what it still has
    CLOSING = "closing"  # concluded: replies awaited, socket closed, then recorded
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """How a session ends: a plain close (`kind` empty) or an error of that kind."""

    code: int
    message: str = ""
    kind: str = ""

    @property
    def is_error(self) -> bool:
        return bool(self.kind)

    @property
    def is_failure(self) -> bool:
        """Recorded as failed: an error other than the server shutting down."""
        return self.is_error and self.kind != SHUTDOWN


SHUTDOWN = "shutdown"
GOING_AWAY = Close(
    protocol.CLOSE_GOING_AWAY,
    "The server is going away: it is shutting down. Reconnect to continue.",
    SHUTDOWN,
)


class ProcessCapacity:
    """This process's sessions, for MAX_SESSIONS_PER_PROCESS.

    `reserve()` and `release()` never await, so a burst of connections cannot all
    pass the check before any of them is counted.
    """

    def __init__(self) -> None:
        self.open = 0

    def reserve(self) -> bool:
        if self.open >= settings.MAX_SESSIONS_PER_PROCESS:
            return False
        self.open += 1
        metrics.ACTIVE_SESSIONS.inc()
        return True

    def release(self) -> None:
        self.open -= 1
        metrics.ACTIVE_SESSIONS.dec()


capacity = ProcessCapacity()


class _Concluded(Exception):
    """Raised inside the session's task group to stop its other tasks."""


class TranscriptionConsumer(StreamingWebsocketConsumer):
    """One audio session: validates, streams audio to the engine, relays its events."""

    state = State.CONNECTING
    session_id: uuid.UUID | None = None
    stream: SpeechToText | None = None
    voice: SessionVoice | None = None
    supervisor: asyncio.Task | None = None
    access: Handle | None = None  # revocation, expiry, deactivation, logout
    bytes_per_second: int | None = None  # PCM's byte rate; None for other encodings
    latency: SessionLatency  # set at connect; with the byte rate once streaming
    has_slot = False  # holds one of the process's MAX_SESSIONS_PER_PROCESS
    end_recorded = False
    socket_closed = False
    drain_deadline: float | None = None  # loop time; set when the server shuts down

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release_slot()  # also when a handler raised
            shutdown.session_gone(self)

    # --- CONNECTING -------------------------------------------------------------

    async def connect(self) -> None:
        self.has_slot = capacity.reserve()  # before any await (see ProcessCapacity)
        shutdown.session_opened(self)
        self.engine = get_engine()
        self.audio_bytes = 0
        self.finals = 0
        self.latency = SessionLatency(None)
        self.waiting_for_room = False
        self.close_reason = ""
        self.conclusion: Close | None = None
        self.concluded = asyncio.Event()
        self.wake_watch = asyncio.Event()
        self.flow = self.scope.get("extensions", {}).get(FLOW_CONTROL)
        await self.accept()
        auth_method = self.scope.get("auth_method")
        if auth_method == "throttled":
            # Counted in logs by the middleware, never stored per attempt: an
            # attacker guessing tokens cannot fill the database.
            metrics.AUTH_THROTTLED.inc()
            await self._close_now(self._auth_refusal())
            return
        params: StreamParams | None = None
        param_refusal = None
        try:
            params = protocol.parse_params(
                self.scope.get("query_string", b""), self.engine.capabilities
            )
        except ProtocolError as exc:
            param_refusal = Close(protocol.CLOSE_POLICY, str(exc), "parameters")
        self.session_id = await self._record_start(params)
        refusal = (
            (self._auth_refusal() if auth_method not in ("token", "session") else None)
            or param_refusal
            or self._shutdown_refusal()
            or self._capacity_refusal()
            or await self._quota_refusal()
        )
        if refusal is not None:
            await self._refuse(refusal)
            return
        assert params is not None  # noqa: S101 (bad parameters are a refusal)
        await self._start(params)

    def _auth_refusal(self) -> Close:
        method = self.scope.get("auth_method")
        message = AUTH_REFUSALS.get(method, AUTH_REFUSALS[None])
        return Close(protocol.CLOSE_POLICY, message, "auth")

    @staticmethod
    def _shutdown_refusal() -> Close | None:
        if not shutdown.draining():
            return None
        return Close(
            protocol.CLOSE_TRY_AGAIN,
            "The server is shutting down: try again later.",
            SHUTDOWN,
        )

    def _capacity_refusal(self) -> Close | None:
        if self.has_slot:
            return None
        return Close(
            protocol.CLOSE_TRY_AGAIN, "Server at capacity: try again later.", "capacity"
        )

    async def _quota_refusal(self) -> Close | None:
        # The counts include this session, which is already recorded: sessions that
        # connect at once may all be refused, never all admitted.
        token, user = self.scope.get("api_token"), self.scope.get("user")
        quotas = []
        if token is not None:
            count = functools.partial(
                selectors.token_active_session_count, token_id=token.pk
            )
            quotas.append(("token", settings.MAX_SESSIONS_PER_TOKEN, count))
        if user is not None and user.is_authenticated:
            count = functools.partial(
                selectors.user_active_session_count, user_id=user.pk
            )
            quotas.append(("user", settings.MAX_SESSIONS_PER_USER, count))
        for who, limit, count in quotas:
            if await database_sync_to_async(count)() > limit:
                return Close(
                    protocol.CLOSE_POLICY,
                    f"Too many concurrent sessions for this {who} (limit {limit}).",
                    "quota",
                )
        return None

    @database_sync_to_async
    def _record_start(self, params: StreamParams | None) -> uuid.UUID:
        client = self.scope.get("client") or ("", 0)
        return services.session_start(
            user=self.scope.get("user"),
            token=self.scope.get("api_token"),
            auth_method=self.scope.get("auth_method") or "",
            engine=self.engine.name,
            params=params,
            client=str(client[0] or ""),
        ).pk

    async def _refuse(self, refusal: Close) -> None:
        """CONNECTING → CLOSED: one {"error"}, the close, then the record."""
        await self._close_now(refusal)
        metrics.session_ended(
            close_code=refusal.code, engine=self.engine.name, audio_seconds=0.0
        )
        logger.info(
            "session %s refused (%s): %s", self.session_id, refusal.code, refusal.kind
        )
        await self._record(
            services.session_reject,
            session_id=self.session_id,
            close_code=refusal.code,
            message=refusal.message,
            kind=refusal.kind,
        )

    async def _close_now(self, refusal: Close) -> None:
        self.state = State.CLOSED
        self._release_slot()
        if refusal.message:
            await self.send(text_data=protocol.error_message(refusal.message))
        await self.close(code=refusal.code)
        self.socket_closed = True

    async def _start(self, params: StreamParams) -> None:
        """CONNECTING → STREAMING: the engine's stream and the session's tasks."""
        self.params = params
        self.bytes_per_second = (
            params.sample_rate * 2 if params.encoding == "pcm" else None
        )
        self.latency = SessionLatency(self.bytes_per_second)
        assert self.session_id is not None  # noqa: S101 (recorded at connect)
        self.voice = await SessionVoice.join(
            session_id=self.session_id,
            channel_layer=self.channel_layer,
            channel_name=self.channel_name,
        )
        try:
            self.stream = await self.engine.open(
                dataclasses.replace(params, session_id=str(self.session_id))
            )
        except EngineError as exc:
            self.conclude(Close(exc.close_code, exc.message, exc.kind))
        except Exception:
            logger.exception("session %s: the engine did not start", self.session_id)
            self.conclude(
                Close(
                    protocol.CLOSE_SERVER_ERROR,
                    "Transcription is unavailable: the engine did not start.",
                    "engine",
                )
            )
        else:
            self.state = State.STREAMING
            self.last_audio = self.started = asyncio.get_running_loop().time()
            if grant := Grant.from_scope(self.scope):
                self.access = access_watch().watch(
                    grant, self._access_ended, label=f"session {self.session_id}"
                )
            logger.info("session %s started (%s)", self.session_id, self.engine.name)
        self.supervisor = asyncio.create_task(self._supervise())

    # --- STREAMING: the client's frames ---------------------------------------------

    async def websocket_receive(self, message: dict) -> None:
        if self.state is not State.STREAMING and self.state is not State.FLUSHING:
            return
        if "too_big" in message:  # announced by daphne_limits from the frame header
            self.conclude(self._too_big(message["too_big"]))
        elif (text := message.get("text")) is not None:
            await self._receive_text(text)
        elif len(chunk := message["bytes"]) > settings.MAX_FRAME_BYTES:
            self.conclude(self._too_big(len(chunk)))  # servers without daphne_limits
        elif self.state is State.STREAMING:
            await self._receive_audio(chunk)

    async def _receive_text(self, text: str) -> None:
        if len(text) > settings.MAX_FRAME_BYTES:
            self.conclude(self._too_big(len(text.encode())))
        elif text == protocol.END_OF_STREAM:
            await self.end_audio()
        else:
            self.conclude(
                Close(
                    protocol.CLOSE_POLICY,
                    "Unexpected text frame: send audio as binary frames and the text "
                    "END_OF_STREAM when done.",
                    "frame",
                )
            )

    @staticmethod
    def _too_big(size: int) -> Close:
        return Close(
            protocol.CLOSE_TOO_BIG,
            f"Frame of {size} bytes is larger than the limit of "
            f"{settings.MAX_FRAME_BYTES} bytes (MAX_FRAME_BYTES).",
            "frame",
        )

    async def _receive_audio(self, chunk: bytes) -> None:
        stream = self.stream
        assert stream is not None  # noqa: S101 (STREAMING has a stream)
        if stream.backlog_full():
            if self.flow is None:
                self.conclude(self._backlog_full())
                return
            await self._wait_for_room(stream, chunk)
        else:
            await stream.send_audio(chunk)
        self.audio_bytes += len(chunk)
        self.last_audio = asyncio.get_running_loop().time()
        self.latency.on_audio(self.audio_bytes, self.last_audio)

    async def _wait_for_room(self, stream: SpeechToText, chunk: bytes) -> None:
        """Flow control: while this waits, daphne stops reading the socket."""
        self.waiting_for_room = True
        sending = asyncio.ensure_future(stream.send_audio(chunk))
        gone = asyncio.ensure_future(self.flow["disconnected"].wait())
        try:
            await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting_for_room = False
            for task in (sending, gone):
                task.cancel()

    def _backlog_full(self) -> Close:
        limit = audio_backlog_limit(self.params)
        if self.bytes_per_second:
            held = f"{limit / self.bytes_per_second:g} seconds of audio"
            setting = "MAX_AUDIO_BACKLOG_SECONDS"
        else:
            held, setting = f"{limit} bytes of audio", "MAX_AUDIO_BACKLOG_BYTES"
        return Close(
            protocol.CLOSE_POLICY,
            f"Audio arrives faster than it can be transcribed: {held} are already "
            f"waiting (the limit, {setting}). Send audio no faster than real time.",
            "backlog",
        )

    async def end_audio(self, reason: str = "") -> None:
        """STREAMING → FLUSHING: no more audio; closes 1000 once the engine flushed."""
        if self.state is not State.STREAMING or self.stream is None:
            return
        self.state = State.FLUSHING
        self.close_reason = reason
        self.progress_at = asyncio.get_running_loop().time()
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
        self.drain_deadline = deadline
        if self.state is State.STREAMING:
            await self.end_audio()
        self.wake_watch.set()  # the deadline joins the timers
        if self.supervisor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self.supervisor), deadline - loop.time() + 1.0
                )

    # --- the session's tasks ------------------------------------------------------

    async def _access_ended(self, reason: str) -> None:
        """The token was revoked or expired, the user deactivated or logged out."""
        self.conclude(Close(protocol.CLOSE_POLICY, reason, "revoked"))

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
                    group.create_task(self._until_concluded())
            except* _Concluded:
                pass
            except* Exception:
                logger.exception("session %s: server error", self.session_id)
                self.conclude(
                    Close(
                        protocol.CLOSE_SERVER_ERROR,
                        "Transcription failed: server error.",
                        "server",
                    )
                )
        await self._close_session()

    async def _until_concluded(self) -> None:
        await self.concluded.wait()
        raise _Concluded

    async def _relay_events(self, stream: SpeechToText) -> None:
        try:
            async for event in stream.events():
                if self.state is State.FLUSHING:
                    self.progress_at = asyncio.get_running_loop().time()
                if event.is_partial:
                    self.latency.on_event(asyncio.get_running_loop().time())
                    if self.params.send_partials:
                        await self.send(
                            text_data=protocol.event_message(
                                event, detail=self.params.detail
                            )
                        )
                elif event.text.strip():
                    await self._relay_final(event)
        except EngineError as exc:
            if exc.close_code == protocol.CLOSE_NORMAL:
                self.conclude(Close(protocol.CLOSE_NORMAL, exc.message))
            else:
                self.conclude(Close(exc.close_code, exc.message, exc.kind))
            return
        except _StoreFailed:
            self.conclude(
                Close(
                    protocol.CLOSE_SERVER_ERROR,
                    "Transcription stopped: the server could not store the transcript.",
                    "database",
                )
            )
            return
        except Exception:
            logger.exception("session %s: engine failed", self.session_id)
            self.conclude(
                Close(
                    protocol.CLOSE_SERVER_ERROR,
                    "Transcription failed: engine error.",
                    "engine",
                )
            )
            return
        if self.drain_deadline is not None:
            self.conclude(GOING_AWAY)  # flushed: the finals it heard are sent
        else:
            self.conclude(Close(protocol.CLOSE_NORMAL, self.close_reason))

    async def _relay_final(self, event) -> None:
        """Stored first, then sent: a final the client has seen is never lost."""
        self.finals += 1
        try:
            transcript = await database_sync_to_async(services.transcript_add_final)(
                session_id=self.session_id,
                seq=self.finals,
                event=event,
                audio_bytes=self.audio_bytes,
                bytes_per_second=self.bytes_per_second,
                silence_seconds=self.voice and self.voice.silence_seconds,
            )
        except Exception as exc:
            logger.exception("session %s: final not stored", self.session_id)
            raise _StoreFailed from exc
        if self.voice:
            self.voice.final_stored(transcript)
        message = protocol.event_message(event, detail=self.params.detail)
        await self.send(text_data=message)
        batch = transcript.batch
        self.latency.on_final(
            event,
            asyncio.get_running_loop().time(),
            str(batch.batch_id) if batch is not None else None,
        )

    async def _watch_time(self) -> None:
        """Idle timeout, longest session, and a bound on the final flush."""
        loop = asyncio.get_running_loop()
        idle = settings.TRANSCRIPTION_IDLE_TIMEOUT
        longest = settings.MAX_SESSION_SECONDS
        while True:
            now = loop.time()
            if self.drain_deadline is not None and now >= self.drain_deadline:
                self.conclude(GOING_AWAY)  # the engine did not finish in time
                return
            if self.state is State.FLUSHING:
                if now - self.progress_at > FLUSH_TIMEOUT_SECONDS:
                    self.conclude(
                        Close(
                            protocol.CLOSE_SERVER_ERROR,
                            "Transcription failed: the engine did not finish in time.",
                            "engine",
                        )
                    )
                    return
                deadline = self.progress_at + FLUSH_TIMEOUT_SECONDS
                if self.drain_deadline is not None:
                    deadline = min(deadline, self.drain_deadline)
            else:
                if self.waiting_for_room:  # reading is paused: not the client's idling
                    self.last_audio = now
                if now - self.last_audio >= idle:
                    await self.end_audio(f"No audio for {idle:g} seconds.")
                    continue
                if now - self.started >= longest:
                    await self.end_audio(
                        f"Session reached the longest allowed, {longest:g} seconds."
                    )
                    continue
                deadline = min(self.last_audio + idle, self.started + longest)
            self.wake_watch.clear()
            pause = max(deadline - now, 0.05)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that meets the event (the task group would wait forever).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self.wake_watch.wait()

    async def _heartbeat(self) -> None:
        """The record says the session lives, with its audio so far."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await database_sync_to_async(services.session_heartbeat)(
                    session_id=self.session_id,
                    audio_bytes=self.audio_bytes,
                    bytes_per_second=self.bytes_per_second,
                )
            except Exception:
                # Timers must go on: a lost heartbeat only makes the record look stale.
                logger.warning(
                    "session %s: heartbeat not stored", self.session_id, exc_info=True
                )

    # --- CLOSING → CLOSED ------------------------------------------------------------

    async def _close_session(self) -> None:
        """Exactly once: the engine released, replies awaited, the socket closed,
        and only then the record (so a failed write never leaves the socket open)."""
        close = self.conclusion or Close(protocol.CLOSE_NORMAL, self.close_reason)
        self.state = State.CLOSING
        if self.access is not None:
            self.access.cancel()
        if self.stream is not None:
            await self.stream.aclose()  # also frees a sender waiting for room
        if close.kind == SHUTDOWN and self.voice:
            await self.voice.flush_and_wait(until=self.drain_deadline)
        if close.is_error:
            await self.send(text_data=protocol.error_message(close.message))
        elif self.voice:
            await self.voice.flush_and_wait()
        await self.close(
            code=close.code, reason=None if close.is_error else close.message or None
        )
        self.socket_closed = True
        self.state = State.CLOSED
        self._release_slot()
        await self._record_end(
            close.code, close.message, error_kind=close.kind, failed=close.is_failure
        )

    async def _record_end(self, code: int | None, reason: str, **extra) -> None:
        self.end_recorded = True
        rate = self.bytes_per_second
        audio_seconds = self.audio_bytes / rate if rate else 0.0
        metrics.session_ended(
            close_code=code, engine=self.engine.name, audio_seconds=audio_seconds
        )
        logger.info(
            "session %s ended (%s%s): %.1f s of audio, %d finals",
            self.session_id,
            code,
            f", {extra['error_kind']}" if extra.get("error_kind") else "",
            audio_seconds,
            self.finals,
        )
        await self._record(
            services.session_end,
            session_id=self.session_id,
            close_code=code,
            reason=reason,
            audio_bytes=self.audio_bytes,
            bytes_per_second=self.bytes_per_second,
            latency=self.latency.summary(),
            **extra,
        )

    async def _record(self, service, **kwargs) -> None:
        try:
            await database_sync_to_async(service)(**kwargs)
        except Exception:
            # The socket is already closed; a record left active is closed later as
            # abandoned (its heartbeat stopped).
            logger.exception("session %s: end not recorded", self.session_id)

    def _release_slot(self) -> None:
        if self.has_slot:
            self.has_slot = False
            capacity.release()

    async def voice_reply(self, event: dict) -> None:
        """A worker's reply to one of this session's batches (channel layer)."""
        if self.voice and (message := self.voice.reply_message(event)):
            await self.send(text_data=message)
            self.latency.on_reply(event["batch_id"], asyncio.get_running_loop().time())

    async def disconnect(self, code: int) -> None:
        supervisor = self.supervisor
        if supervisor is not None:
            if not self.socket_closed:
                supervisor.cancel()  # the client left first: stop streaming now
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor  # else: let our own close finish recording
        if self.access is not None:
            self.access.cancel()
        if self.stream is not None:
            await self.stream.aclose()
        if self.voice is not None:
            await self.voice.leave()
        self._release_slot()
        if supervisor is not None and not self.end_recorded:
            # The client went away, mid-stream or while its last finals and replies
            # were on their way: what it said is kept, the record is closed.
            await self._record_end(code, "client disconnected")
            logger.info("session %s: client left (%s)", self.session_id, code)
        self.state = State.CLOSED


class _StoreFailed(Exception):
    """A final could not be stored: the session must not go on as if it were."""
