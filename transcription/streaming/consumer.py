"""The transcription WebSocket consumer: the transport of a `StreamSession`.

Client → server: binary frames of audio in the declared encoding; the text frame
`END_OF_STREAM` when there is no more audio.
Server → client: `{"partialTranscript": "…"}` (when sendPartials=true),
`{"transcript": "…"}` for each final, `{"error": "…"}` right before any close that is
not a plain 1000, and with a receiver configured `{"type": "server_response",
"message": "…", "audio": "<base64 MP3>" | null, "batch_id": "…"}` for each non-empty
reply. With resumable=true, first `{"type": "session", "id", "resumeWithin"}`, and
finals and replies carry `seq`; `?resume=<id>&after=<seq>` resumes such a session
(`{"type": "resumed", …}` first). Every parameter, message and close:
docs/protocol.md.

The consumer only translates: socket events become calls on its session
(`transcription.streaming.session`), the session's messages and closes become frames.
"""

from __future__ import annotations

import asyncio

from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.middleware import TOKEN_SUBPROTOCOL
from transcription import metrics
from transcription.engines import get_engine
from transcription.streaming import protocol, resume
from transcription.streaming.admission import Client
from transcription.streaming.dispatch import StreamingWebsocketConsumer
from transcription.streaming.parking import HAND_OVER
from transcription.streaming.session import State, StreamSession
from transcription.voice_loop.replies import REPLY_EVENT
from voiceproject.server.flow_control import FLOW_CONTROL


class TranscriptionConsumer(StreamingWebsocketConsumer):
    """One WebSocket carrying one audio session."""

    session: StreamSession | None = None
    gone: asyncio.Event | None = None  # see session.Transport

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.session is not None:
                self.session.release()  # also when a handler raised

    async def connect(self) -> None:
        flow = self.scope.get("extensions", {}).get(FLOW_CONTROL)
        self.gone = flow["disconnected"] if flow is not None else None
        query_string = self.scope.get("query_string", b"")
        if resume.asks_resume(query_string):
            await self.accept()
            self.session = await resume.resume_session(
                Client.from_scope(self.scope), query_string, self
            )
            return
        # Created before any await: it reserves the process's slot at once.
        self.session = StreamSession(
            client=Client.from_scope(self.scope),
            query_string=self.scope.get("query_string", b""),
            engine=get_engine(),
        )
        await accept(self)
        await self.session.open(self)

    async def websocket_receive(self, message: dict) -> None:
        session = self.session
        if session is None or not session.takes_frames:
            return
        if "too_big" in message:  # announced by flow control from the frame header
            session.frame_too_big(message["too_big"])
        elif (text := message.get("text")) is not None:
            await session.receive_text(text)
        else:
            await session.receive_audio(message["bytes"])

    async def dispatch_layer(self, message: dict) -> None:
        if message.get("type") == REPLY_EVENT:  # a worker's reply
            if self.session is not None:
                await self.session.reply(message)  # type: ignore[arg-type]
            return
        if message.get("type") == HAND_OVER:  # another server resumes the session
            if self.session is not None:
                await self.session.parking.hand_over(message["reply_to"])
            return
        await super().dispatch_layer(message)

    def layer_failed(self, exc: BaseException) -> None:
        if self.session is not None:
            self.session.layer_lost(exc)

    async def websocket_disconnect(self, message: dict) -> None:
        if "outbound_overflow" in message and self.session is not None:
            # The server dropped the socket: the client did not read (flow control).
            self.session.outbound_overflow(message["outbound_overflow"])
        await super().websocket_disconnect(message)

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            await self.session.transport_lost(code, self)
            if self.session.state is not State.CLOSED:
                self.session = None  # parked, or resumed over another socket

    # --- the session's Transport (close() is AsyncWebsocketConsumer's) ------------

    async def send_text(self, text: str) -> None:
        await self.send(text_data=text)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """A WebSocket to a path that is not an endpoint: accepted, then one {"error"}
    and 1008, before any authentication (counted, never looked up or stored)."""

    async def connect(self) -> None:
        metrics.AUTH_REFUSED.labels(reason="unknown_path").inc()
        await accept(self)
        close = protocol.UNKNOWN_PATH
        await self.send(text_data=protocol.error_message(close.message))
        await self.close(code=close.code)


async def accept(consumer: AsyncWebsocketConsumer) -> None:
    """Accept the handshake; a client that offered the `token` subprotocol (a browser
    that sends its token so) gets it back, or its browser would drop the socket."""
    offered = consumer.scope.get("subprotocols") or ()
    if TOKEN_SUBPROTOCOL in offered:
        await consumer.accept(subprotocol=TOKEN_SUBPROTOCOL)
    else:
        await consumer.accept()
