"""The transcription WebSocket consumer (seed 004, SPEC §3).

Client → server: binary frames of audio in the declared encoding; the text frame
`END_OF_STREAM` when there is no more audio.
Server → client: `{"partialTranscript": "…"}` (when sendPartials=true),
`{"transcript": "…"}` for each final, `{"error": "…"}` right before any close that is
not a plain 1000. Closes: 1000 after END_OF_STREAM or a timeout, 1008 auth/parameters/
quota, 1009 frame too big, 1011 engine or server error, 1013 server at capacity.
With a receiver configured (SPEC §4), also `{"type": "server_response", "message":
"…", "audio": "<base64 MP3>" | null, "batch_id": "…"}` for each non-empty reply; at
END_OF_STREAM the last batch's reply comes before the 1000 close.
"""

import asyncio
import contextlib
import dataclasses
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from transcription import protocol, selectors, services
from transcription.engines import EngineError, SpeechToText, get_engine
from transcription.models import HEARTBEAT_SECONDS, AudioSession
from transcription.protocol import ProtocolError, StreamParams
from transcription.streaming import StreamingWebsocketConsumer
from transcription.voice import SessionVoice

logger = logging.getLogger(__name__)

# After END_OF_STREAM the engine must make progress: a file streamed faster than real
# time may take minutes to decode, so the bound restarts with every event.
FLUSH_TIMEOUT_SECONDS = 30.0
_open_sessions = 0  # this process's live sessions, for MAX_SESSIONS_PER_PROCESS


class TranscriptionConsumer(StreamingWebsocketConsumer):
    """One audio session: validates, streams audio to the engine, relays its events."""

    session: AudioSession | None = None
    stream: SpeechToText | None = None
    closing = False
    counted = False
    voice: SessionVoice | None = None

    async def connect(self) -> None:
        await self.accept()
        self.engine = get_engine()
        self.tasks: list[asyncio.Task] = []
        self.audio_bytes = 0
        self.finals = 0
        self.ended = False
        self.ended_event = asyncio.Event()
        self.close_reason = ""
        params: StreamParams | None = None
        param_refusal = None
        try:
            params = protocol.parse_params(
                self.scope.get("query_string", b""), self.engine.capabilities
            )
        except ProtocolError as exc:
            param_refusal = (protocol.CLOSE_POLICY, str(exc), "parameters")
        self.session = session = await self._record_start(params)
        self.session_id = session.pk
        refusal = self._auth_refusal() or param_refusal or await self._limit_refusal()
        if refusal:
            code, message, kind = refusal
            await self.send(text_data=protocol.error_message(message))
            await database_sync_to_async(services.session_reject)(
                session=session, close_code=code, message=message, kind=kind
            )
            await self.close(code=code)
        elif params is not None:  # always: bad parameters are refused above
            self.params = params
            self.voice = await SessionVoice.join(
                session_id=self.session_id,
                channel_layer=self.channel_layer,
                channel_name=self.channel_name,
            )
            await self._start_stream(params)

    async def _start_stream(self, params: StreamParams) -> None:
        global _open_sessions
        _open_sessions += 1
        self.counted = True
        self.bytes_per_second = (
            params.sample_rate * 2 if params.encoding == "pcm" else None
        )
        loop = asyncio.get_running_loop()
        self.last_audio = self.started = loop.time()
        try:
            self.stream = await self.engine.open(
                dataclasses.replace(params, session_id=str(self.session_id))
            )
        except EngineError as exc:
            await self.fail(exc.close_code, exc.message, kind=exc.kind)
            return
        self.tasks = [
            asyncio.create_task(self._relay_events(self.stream)),
            asyncio.create_task(self._watch_time()),
        ]
        logger.info("session %s started (%s)", self.session_id, self.engine.name)

    def _auth_refusal(self) -> tuple[int, str, str] | None:
        method = self.scope.get("auth_method")
        if method in ("token", "session"):
            return None
        messages = {
            None: "Missing token: pass ?token=<API token> or an "
            "'Authorization: Bearer <API token>' header.",
            "bad_token": "Invalid token: it is unknown, revoked or expired.",
            "bad_origin": "Origin not allowed: a logged-in browser session must come "
            "from a page on one of this server's allowed hosts.",
        }
        return protocol.CLOSE_POLICY, messages[method], "auth"

    async def _limit_refusal(self) -> tuple[int, str, str] | None:
        if _open_sessions >= settings.MAX_SESSIONS_PER_PROCESS:
            return (
                protocol.CLOSE_TRY_AGAIN,
                "Server at capacity: try again later.",
                "capacity",
            )
        token = self.scope.get("api_token")
        if token is not None:
            limit = settings.MAX_SESSIONS_PER_TOKEN
            active = await database_sync_to_async(selectors.token_active_session_count)(
                token_id=token.pk
            )
            # The count includes this session, which is already recorded.
            if active > limit:
                return (
                    protocol.CLOSE_POLICY,
                    f"Too many concurrent sessions for this token (limit {limit}).",
                    "quota",
                )
        return None

    @database_sync_to_async
    def _record_start(self, params: StreamParams | None) -> AudioSession:
        user = self.scope.get("user")
        client = self.scope.get("client") or ("", 0)
        return services.session_start(
            user=user,
            token=self.scope.get("api_token"),
            auth_method=self.scope.get("auth_method") or "",
            engine=self.engine.name,
            params=params,
            client=str(client[0] or ""),
        )

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.stream is None or self.closing:
            return
        if bytes_data is not None:
            if len(bytes_data) > settings.MAX_FRAME_BYTES:
                await self.fail(
                    protocol.CLOSE_TOO_BIG,
                    f"Audio frame of {len(bytes_data)} bytes is larger than the limit "
                    f"of {settings.MAX_FRAME_BYTES} bytes.",
                    kind="frame",
                )
                return
            if self.ended:
                return
            self.audio_bytes += len(bytes_data)
            self.last_audio = asyncio.get_running_loop().time()
            await self.stream.send_audio(bytes_data)
        elif text_data == protocol.END_OF_STREAM:
            await self.end_audio()
        else:
            await self.fail(
                protocol.CLOSE_POLICY,
                "Unexpected text frame: send audio as binary frames and the text "
                "END_OF_STREAM when done.",
                kind="frame",
            )

    async def end_audio(self, reason: str = "") -> None:
        """Stop taking audio; the relay closes 1000 once the engine has flushed."""
        if not self.ended and self.stream is not None:
            self.ended = True
            self.ended_event.set()
            self.close_reason = reason
            self.progress_at = asyncio.get_running_loop().time()
            await self.stream.end_audio()

    async def _relay_events(self, stream: SpeechToText) -> None:
        try:
            async for event in stream.events():
                if self.ended:
                    self.progress_at = asyncio.get_running_loop().time()
                if event.is_partial:
                    if self.params.send_partials:
                        await self.send(
                            text_data=protocol.event_message(
                                event, detail=self.params.detail
                            )
                        )
                    continue
                if not event.text.strip():
                    continue
                self.finals += 1
                transcript = await database_sync_to_async(
                    services.transcript_add_final
                )(
                    session_id=self.session_id,
                    seq=self.finals,
                    event=event,
                    audio_bytes=self.audio_bytes,
                    bytes_per_second=self.bytes_per_second,
                    silence_seconds=self.voice and self.voice.silence_seconds,
                )
                if self.voice:
                    self.voice.final_stored(transcript)
                await self.send(
                    text_data=protocol.event_message(event, detail=self.params.detail)
                )
        except EngineError as exc:
            if exc.close_code == protocol.CLOSE_NORMAL:
                await self.finish(exc.message)
            else:
                await self.fail(exc.close_code, exc.message, kind=exc.kind)
            return
        except Exception:
            logger.exception("session %s: engine failed", self.session_id)
            await self.fail(
                protocol.CLOSE_SERVER_ERROR,
                "Transcription failed: engine error.",
                kind="engine",
            )
            return
        await self.finish(self.close_reason)

    async def _watch_time(self) -> None:
        """Idle timeout, longest session, a bound on the final flush, heartbeats."""
        loop = asyncio.get_running_loop()
        idle = settings.TRANSCRIPTION_IDLE_TIMEOUT
        longest = settings.MAX_SESSION_SECONDS
        heartbeat_due = self.started + HEARTBEAT_SECONDS
        while not self.closing:
            now = loop.time()
            if now >= heartbeat_due:
                heartbeat_due = now + HEARTBEAT_SECONDS
                await database_sync_to_async(services.session_heartbeat)(
                    session_id=self.session_id,
                    audio_bytes=self.audio_bytes,
                    bytes_per_second=self.bytes_per_second,
                )
            if self.ended:
                if now - self.progress_at > FLUSH_TIMEOUT_SECONDS:
                    await self.fail(
                        protocol.CLOSE_SERVER_ERROR,
                        "Transcription failed: the engine did not finish in time.",
                        kind="engine",
                    )
                    return
                deadline = self.progress_at + FLUSH_TIMEOUT_SECONDS
            elif now - self.last_audio >= idle:
                await self.end_audio(f"No audio for {idle:g} seconds.")
                continue
            elif now - self.started >= longest:
                await self.end_audio(
                    f"Session reached the longest allowed, {longest:g} seconds."
                )
                continue
            else:
                deadline = min(self.last_audio + idle, self.started + longest)
            pause = max(min(deadline, heartbeat_due) - now, 0.05)
            if self.ended:
                await asyncio.sleep(pause)
                continue
            # END_OF_STREAM sets `ended_event`, so the flush bound starts at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended_event.wait(), pause)

    async def finish(self, reason: str = "") -> None:
        """Close 1000 after recording the session as completed."""
        if self.closing:
            return
        self.closing = True
        if self.voice:
            await self.voice.flush_and_wait()
        await self._record_end(protocol.CLOSE_NORMAL, reason, failed=False)
        await self.close(code=protocol.CLOSE_NORMAL, reason=reason or None)

    async def fail(self, code: int, message: str, *, kind: str) -> None:
        """One {"error"}, the error recorded, then the close."""
        if self.closing:
            return
        self.closing = True
        await self.send(text_data=protocol.error_message(message))
        await database_sync_to_async(services.session_error_add)(
            session_id=self.session_id, close_code=code, kind=kind, message=message
        )
        await self._record_end(code, message, failed=True)
        await self.close(code=code)

    async def _record_end(self, code: int | None, reason: str, *, failed: bool) -> None:
        await database_sync_to_async(services.session_end)(
            session_id=self.session_id,
            close_code=code,
            reason=reason,
            failed=failed,
            audio_bytes=self.audio_bytes,
            bytes_per_second=getattr(self, "bytes_per_second", None),
        )

    async def voice_reply(self, event: dict) -> None:
        """A worker's reply to one of this session's batches (channel layer)."""
        if self.voice and (message := self.voice.reply_message(event)):
            await self.send(text_data=message)

    async def disconnect(self, code: int) -> None:
        global _open_sessions
        current = asyncio.current_task()
        for task in getattr(self, "tasks", []):
            if task is not current:
                task.cancel()
        for task in getattr(self, "tasks", []):
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.stream is not None:
            await self.stream.aclose()
        if self.voice is not None:
            await self.voice.leave()
        if self.counted:
            _open_sessions -= 1
            self.counted = False
        if self.session is not None and not self.closing:
            # The client went away without END_OF_STREAM: what it said is kept.
            self.closing = True
            await self._record_end(code, "client disconnected", failed=False)
            logger.info("session %s: client left (%s)", self.session_id, code)
