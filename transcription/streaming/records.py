"""A session's record: its row, what it counts, each write off the event loop.

Services write (transcription.services); this calls them through
`database_sync_to_async`, each call bounded by DATABASE_TIMEOUT_SECONDS, and counts
the session's audio and finals, so that what is stored, logged and measured when it
ends comes from one place.

The database may be away (a crash, a failover): finals are then held in memory, in
order, bounded per session (MAX_HELD_FINALS) and per process (MAX_HELD_BYTES), and
stored as soon as it answers; a session that ends meanwhile is recorded then, by a
task of its own (docs/operations.md, "Outages").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from transcription import metrics, services
from transcription.db import DATABASE_AWAY, db_call
from transcription.engines import (
    CountsAudio,
    LanguageIdentified,
    StreamParams,
    TranscriptEvent,
)
from transcription.engines.types import bytes_per_second
from transcription.models import Transcript
from transcription.services.sessions import LatencySummary
from transcription.streaming import protocol
from transcription.streaming.admission import Client
from transcription.streaming.protocol import Close

logger = logging.getLogger(__name__)


MAX_HELD_FINALS = 1000  # per session
MAX_HELD_BYTES = 8 * 1024 * 1024  # per process: the finals' text, and a charge each
HELD_CHARGE = 256  # bytes counted per held final besides its text
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0

_held_bytes = 0  # this process's finals held in memory
_later: set[asyncio.Task] = set()  # records finished once the database is back


class StoreFailed(Exception):
    """A final could not be stored: the session must not go on as if it were."""


class DatabaseAway(Exception):
    """The database did not answer (within DATABASE_TIMEOUT_SECONDS)."""


@dataclasses.dataclass(slots=True)
class _Held:
    seq: int
    event: TranscriptEvent
    audio_bytes: int
    decoded_seconds: float | None
    silence_seconds: float | None
    heard_at: dt.datetime
    message_seq: int | None = None

    @property
    def cost(self) -> int:
        return len(self.event.text.encode()) + HELD_CHARGE


class SessionRecord:
    """The AudioSession row of one session, and the audio and finals it counts."""

    def __init__(self, *, engine: str) -> None:
        self.engine = engine
        self.session_id: uuid.UUID | None = None
        self.bytes_per_second: int | None = None  # PCM's, G.711's; None: compressed
        self.audio_bytes = 0
        # Compressed audio: the stream that decodes it counts the seconds.
        self.decoder: CountsAudio | None = None
        self.finals = 0
        self.held: collections.deque[_Held] = collections.deque()
        self.holding = asyncio.Event()  # set while finals are held
        self.away_since: float | None = None  # monotonic: the database went away
        self.unsaved_language: LanguageIdentified | None = None  # written at the end
        self._storing = asyncio.Lock()

    @property
    def audio_seconds(self) -> float:
        rate = self.bytes_per_second
        if rate:
            return self.audio_bytes / rate
        return self.decoder.audio_seconds if self.decoder is not None else 0.0

    @property
    def decoded_seconds(self) -> float | None:
        """The seconds to store when the bytes cannot say (None: they can)."""
        return self.audio_seconds if self.bytes_per_second is None else None

    async def start(
        self, client: Client, params: StreamParams | None, *, resumable: bool = False
    ) -> None:
        """The row, before anything is decided (DatabaseAway: no row)."""
        try:
            session = await db_call(
                services.session_start,
                user=client.user,
                token=client.token,
                auth_method=client.auth_method or "",
                engine=self.engine,
                params=params,
                client=client.address,
                resumable=resumable,
            )
        except DATABASE_AWAY as exc:
            logger.warning("session refused: database unavailable (%s)", _name(exc))
            raise DatabaseAway from exc
        self.session_id = session.pk

    def streaming(self, params: StreamParams) -> None:
        self.bytes_per_second = bytes_per_second(params)

    async def final(
        self,
        event: TranscriptEvent,
        *,
        silence_seconds: float | None,
        message_seq: int | None = None,
    ) -> list[Transcript]:
        """Store one final as it arrives, after those held before it: what was
        stored now, in order (none while the database is away: held). StoreFailed
        beyond the bounds, or on a failure that is not the database being away."""
        self.finals += 1
        item = _Held(
            seq=self.finals,
            event=event,
            audio_bytes=self.audio_bytes,
            decoded_seconds=self.decoded_seconds,
            silence_seconds=silence_seconds,
            heard_at=timezone.now(),
            message_seq=message_seq,
        )
        global _held_bytes
        if (
            len(self.held) >= MAX_HELD_FINALS
            or _held_bytes + item.cost > MAX_HELD_BYTES
        ):
            logger.error(
                "session %s: final not stored: %d finals held, the database away",
                self.session_id,
                len(self.held),
            )
            raise StoreFailed
        self.held.append(item)
        _held_bytes += item.cost
        self.holding.set()
        return await self.store_held()

    async def store_held(self) -> list[Transcript]:
        """The held finals, stored in order until the database fails (if it does)."""
        global _held_bytes
        stored: list[Transcript] = []
        async with self._storing:
            while self.held:
                item = self.held[0]
                try:
                    stored.append(await self._store(item))
                except DATABASE_AWAY as exc:
                    self._away(exc)
                    return stored
                except IntegrityError:
                    # An earlier attempt was stored, its answer lost with the
                    # connection: stored it is.
                    logger.warning(
                        "session %s: final %d was stored already",
                        self.session_id,
                        item.seq,
                    )
                except Exception as exc:
                    logger.exception("session %s: final not stored", self.session_id)
                    raise StoreFailed from exc
                self.held.popleft()
                _held_bytes -= item.cost
            self.holding.clear()
            if self.away_since is not None:
                logger.warning(
                    "session %s: the database is back after %.1f s: held finals stored",
                    self.session_id,
                    time.monotonic() - self.away_since,
                )
                self.away_since = None
        return stored

    async def _store(self, item: _Held) -> Transcript:
        return await db_call(
            services.transcript_add_final,
            session_id=self.session_id,
            seq=item.seq,
            event=item.event,
            audio_bytes=item.audio_bytes,
            bytes_per_second=self.bytes_per_second,
            audio_seconds=item.decoded_seconds,
            silence_seconds=item.silence_seconds,
            heard_at=item.heard_at,
            message_seq=item.message_seq,
        )

    def _away(self, exc: BaseException) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            logger.warning(
                "session %s: database unavailable (%s): finals held in memory "
                "until it answers",
                self.session_id,
                _name(exc),
            )

    def away_for(self) -> float:
        """Seconds since the database stopped answering this session (0: it does)."""
        return 0.0 if self.away_since is None else time.monotonic() - self.away_since

    async def store_held_while_away(
        self, stored: Callable[[list[Transcript]], object]
    ) -> Close:
        """The session's task while the database is away: the finals held are
        stored once it answers (each lot passed to `stored`); how the session ends
        when one cannot be, or after DB_OUTAGE_SECONDS (they are stored later)."""
        delay = RETRY_FIRST_SECONDS
        while True:
            await self.holding.wait()
            await asyncio.sleep(delay)
            try:
                stored(await self.store_held())
            except StoreFailed:
                return protocol.NOT_STORED
            if not self.held:
                delay = RETRY_FIRST_SECONDS
            elif (away := self.away_for()) >= settings.DB_OUTAGE_SECONDS:
                logger.warning(
                    "session %s: the database has been away %.0f s: ending",
                    self.session_id,
                    away,
                )
                return protocol.database_away(settings.DB_OUTAGE_SECONDS)
            else:
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def language(self, found: LanguageIdentified) -> None:
        """language=auto: the language identified, stored before the finals it
        lets through (their batches speak in it); kept for the end if the
        database does not answer now."""
        try:
            await self._language(found)
        except Exception:
            logger.warning(
                "session %s: identified language not stored yet",
                self.session_id,
                exc_info=True,
            )
            self.unsaved_language = found

    async def _language(self, found: LanguageIdentified) -> None:
        await db_call(
            services.session_language_identified,
            session_id=self.session_id,
            language=found.language,
            probability=found.probability,
        )

    async def _language_unsaved(self) -> None:
        """The language identified, if the database did not take it then."""
        if (found := self.unsaved_language) is not None:
            await self._language(found)
            self.unsaved_language = None

    async def heartbeat(self) -> None:
        """The row says the session lives, with its audio so far."""
        try:
            await db_call(
                services.session_heartbeat,
                session_id=self.session_id,
                audio_bytes=self.audio_bytes,
                bytes_per_second=self.bytes_per_second,
                audio_seconds=self.decoded_seconds,
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

    async def release(self, code: int, reason: str) -> bool:
        """The server shuts down and lets go of a resumable session it closed: the
        row stays active for another server to take over (`services.session_release`).
        False: not released (finals still held, or the database did not take it);
        the caller ends the row instead."""
        if self.session_id is None or self.held:
            return False
        try:
            await self._language_unsaved()
            released = await db_call(
                services.session_release,
                session_id=self.session_id,
                close_code=code,
                reason=reason,
                audio_bytes=self.audio_bytes,
                bytes_per_second=self.bytes_per_second,
                audio_seconds=self.decoded_seconds,
            )
        except DATABASE_AWAY:
            return False
        except Exception:
            logger.exception("session %s: not released", self.session_id)
            return False
        if released:
            logger.info(
                "session %s released (%s): another server may resume it",
                self.session_id,
                code,
            )
        return released

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
        end = {
            "session_id": self.session_id,
            "close_code": code,
            "reason": reason,
            "audio_bytes": self.audio_bytes,
            "bytes_per_second": self.bytes_per_second,
            "audio_seconds": self.decoded_seconds,
            "latency": latency,
            "error_kind": error_kind,
            "failed": failed,
        }
        if not await self._finish(end):
            logger.warning(
                "session %s: ended while the database is away: recorded once it "
                "answers (%d finals held)",
                self.session_id,
                len(self.held),
            )
            task = asyncio.create_task(self._finish_later(end))
            _later.add(task)
            task.add_done_callback(_later.discard)

    async def _finish(self, end: dict[str, Any]) -> bool:
        """The held finals, then the row's end: True once both are stored (or a
        failure that is not an outage was logged)."""
        try:
            await self.store_held()
        except StoreFailed:
            return True  # logged; the rest of what is held cannot be stored either
        if self.held:
            return False
        try:
            await self._language_unsaved()
            await db_call(services.session_end, **end)
        except DATABASE_AWAY:
            return False
        except Exception:
            logger.exception("session %s: end not recorded", self.session_id)
        return True

    async def _finish_later(self, end: dict[str, Any]) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            await asyncio.sleep(delay)
            if await self._finish(end):
                logger.info(
                    "session %s: recorded, the database is back", self.session_id
                )
                return
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _write(self, service, **kwargs) -> None:
        try:
            await db_call(service, **kwargs)
        except Exception:
            # The socket is already closed; a record left active is closed later as
            # abandoned (its heartbeat stopped).
            logger.exception("session %s: end not recorded", self.session_id)


def _name(exc: BaseException) -> str:
    # The class only: a driver's message may quote the database's address.
    return exc.__class__.__name__
