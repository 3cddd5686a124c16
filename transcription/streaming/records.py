"""A session's record: its row, what it counts, each write off the event loop.

Services write (transcription.services); this calls them through
`database_sync_to_async` and counts the session's audio and finals, so that what is
stored, logged and measured when it ends comes from one place.
"""

from __future__ import annotations

import logging
import uuid

from channels.db import database_sync_to_async

from transcription import metrics, services
from transcription.engines import StreamParams, TranscriptEvent
from transcription.models import Transcript
from transcription.services.sessions import LatencySummary
from transcription.streaming.admission import Client
from transcription.streaming.protocol import Close

logger = logging.getLogger(__name__)


class StoreFailed(Exception):
    """A final could not be stored: the session must not go on as if it were."""


class SessionRecord:
    """The AudioSession row of one session, and the audio and finals it counts."""

    def __init__(self, *, engine: str) -> None:
        self.engine = engine
        self.session_id: uuid.UUID | None = None
        self.bytes_per_second: int | None = None  # PCM's byte rate; else None
        self.audio_bytes = 0
        self.finals = 0

    @property
    def audio_seconds(self) -> float:
        rate = self.bytes_per_second
        return self.audio_bytes / rate if rate else 0.0

    async def start(self, client: Client, params: StreamParams | None) -> None:
        """The row, before anything is decided (bad parameters are kept too)."""
        session = await database_sync_to_async(services.session_start)(
            user=client.user,
            token=client.token,
            auth_method=client.auth_method or "",
            engine=self.engine,
            params=params,
            client=client.address,
        )
        self.session_id = session.pk

    def streaming(self, params: StreamParams) -> None:
        if params.encoding == "pcm":
            self.bytes_per_second = params.sample_rate * 2

    async def final(
        self, event: TranscriptEvent, *, silence_seconds: float | None
    ) -> Transcript:
        """Store one final as it arrives (StoreFailed when it cannot be)."""
        self.finals += 1
        try:
            return await database_sync_to_async(services.transcript_add_final)(
                session_id=self.session_id,
                seq=self.finals,
                event=event,
                audio_bytes=self.audio_bytes,
                bytes_per_second=self.bytes_per_second,
                silence_seconds=silence_seconds,
            )
        except Exception as exc:
            logger.exception("session %s: final not stored", self.session_id)
            raise StoreFailed from exc

    async def heartbeat(self) -> None:
        """The row says the session lives, with its audio so far."""
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

    async def reject(self, refusal: Close) -> None:
        metrics.session_ended(
            close_code=refusal.code, engine=self.engine, audio_seconds=0.0
        )
        logger.info(
            "session %s refused (%s): %s", self.session_id, refusal.code, refusal.kind
        )
        await self._write(
            services.session_reject,
            session_id=self.session_id,
            close_code=refusal.code,
            message=refusal.message,
            kind=refusal.kind,
        )

    async def end(
        self,
        code: int | None,
        reason: str,
        *,
        latency: LatencySummary,
        error_kind: str = "",
        failed: bool | None = None,
    ) -> None:
        """Close the row (its error too, with `error_kind`), counted and logged."""
        metrics.session_ended(
            close_code=code, engine=self.engine, audio_seconds=self.audio_seconds
        )
        logger.info(
            "session %s ended (%s%s): %.1f s of audio, %d finals",
            self.session_id,
            code,
            f", {error_kind}" if error_kind else "",
            self.audio_seconds,
            self.finals,
        )
        await self._write(
            services.session_end,
            session_id=self.session_id,
            close_code=code,
            reason=reason,
            audio_bytes=self.audio_bytes,
            bytes_per_second=self.bytes_per_second,
            latency=latency,
            error_kind=error_kind,
            failed=failed,
        )

    async def _write(self, service, **kwargs) -> None:
        try:
            await database_sync_to_async(service)(**kwargs)
        except Exception:
            # The socket is already closed; a record left active is closed later as
            # abandoned (its heartbeat stopped).
            logger.exception("session %s: end not recorded", self.session_id)
