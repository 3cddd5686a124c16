"""Writes for sessions: open, store each final as it arrives, errors, heartbeat, end."""

import dataclasses
import datetime as dt
import logging
import uuid
from collections import Counter

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from transcription import server_process
from transcription.engines import StreamParams, TranscriptEvent
from transcription.models import (
    HEARTBEAT_SECONDS,
    AudioSession,
    ReceiverBatch,
    SessionError,
    Transcript,
)
from transcription.services.batches import batch_join
from transcription.services.errors import session_error_add

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class LatencySummary:
    """What a session stores: field names are AudioSession's."""

    first_partial_seconds: float | None = None
    final_latency_p50: float | None = None
    final_latency_max: float | None = None
    reply_latency_p50: float | None = None
    reply_latency_max: float | None = None

    def as_fields(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def voice_parameters(params: StreamParams) -> dict[str, object]:
    """The voice loop's extensions a session asked for, as stored in its
    `parameters` (the batch worker, in any process, reads them there)."""
    asked: dict[str, object] = {}
    if params.reply_stream:
        asked["replyStream"] = True
    if params.barge_in:
        asked["bargeIn"] = True
    if params.silence_ms is not None:
        asked["silenceMs"] = params.silence_ms
    return asked


def turn_parameters(params: StreamParams) -> dict[str, object]:
    """The end-of-turn settings a session asked for (endpointingMs, vadEvents), as
    stored in its `parameters` (a take-over elsewhere opens the engine with them)."""
    asked: dict[str, object] = {}
    if params.endpointing_ms is not None:
        asked["endpointingMs"] = params.endpointing_ms
    if params.vad_events:
        asked["vadEvents"] = True
    return asked


def session_start(
    *,
    user,
    token,
    auth_method: str,
    engine: str,
    params: StreamParams | None,
    client: str = "",
    resumable: bool = False,
) -> AudioSession:
    """Record a new session as active (or, for a refused one, as the caller decides)."""
    fields = {}
    if params is not None:
        parameters = {
            "detail": params.detail,
            **dict(params.options),
            **voice_parameters(params),
            **turn_parameters(params),
        }
        if params.word_times:
            parameters["wordTimes"] = True
        if resumable:
            parameters["resumable"] = True
        fields = {
            "language": params.language,
            "encoding": params.encoding,
            "sample_rate": params.sample_rate,
            "send_partials": params.send_partials,
            "parameters": parameters,
        }
    return AudioSession.objects.create(
        user=user if user is not None and user.is_authenticated else None,
        token=token,
        auth_method=auth_method or "",
        engine=engine,
        client=client[:64],
        **server_process.current(),
        **fields,
    )


def session_reject(
    *, session_id: uuid.UUID, close_code: int, message: str, kind: str
) -> None:
    """A session refused at connect: status rejected, with its error."""
    with transaction.atomic():
        SessionError.objects.create(
            session_id=session_id, close_code=close_code, kind=kind, message=message
        )
        AudioSession.objects.filter(pk=session_id).update(
            status=AudioSession.Status.REJECTED,
            close_code=close_code,
            ended_at=timezone.now(),
        )


def transcript_add_final(
    *,
    session_id: uuid.UUID,
    seq: int,
    event: TranscriptEvent,
    audio_bytes: int,
    bytes_per_second: float | None,
    audio_seconds: float | None = None,
    silence_seconds: float | None = None,
    heard_at: dt.datetime | None = None,
    message_seq: int | None = None,
) -> Transcript:
    """Store one final transcript the moment it exists, and the audio count so far.

    With `silence_seconds` (a receiver is configured) the final joins the session's
    open batch in the same transaction, so every final is in exactly one batch.
    `heard_at`: when it was heard, for a final stored late (the database was away).
    `message_seq`: the seq it is sent with (a resumable session).
    """
    with transaction.atomic():
        batch = None
        if silence_seconds is not None:
            batch = batch_join(session_id, silence_seconds)
        transcript = Transcript.objects.create(
            session_id=session_id,
            seq=seq,
            text=event.text,
            start_seconds=event.start,
            end_seconds=event.end,
            result_id=event.result_id[:64],
            batch=batch,
            created_at=heard_at or timezone.now(),
            message_seq=message_seq,
        )
        _session_update_audio(session_id, audio_bytes, bytes_per_second, audio_seconds)
    return transcript


def session_end(
    *,
    session_id: uuid.UUID,
    close_code: int | None,
    reason: str = "",
    failed: bool | None = None,
    error_kind: str = "",
    audio_bytes: int,
    bytes_per_second: float | None,
    audio_seconds: float | None = None,
    latency: LatencySummary | None = None,
) -> None:
    """Close the record of a session (only once: a second call changes nothing).

    With `error_kind`, the error (`reason`) is stored with it, in the same
    transaction, and the session failed unless `failed=False` says otherwise (a
    server shutting down ends sessions with an error entry, not as failures).
    `latency` is the session's figures (SessionLatency).
    """
    if failed is None:
        failed = bool(error_kind)
    status = AudioSession.Status.FAILED if failed else AudioSession.Status.COMPLETED
    with transaction.atomic():
        if error_kind:
            session_error_add(
                session_id=session_id,
                close_code=close_code,
                kind=error_kind,
                message=reason,
            )
        AudioSession.objects.filter(
            pk=session_id, status=AudioSession.Status.ACTIVE
        ).update(
            status=status,
            close_code=close_code,
            close_reason=reason[:200],
            ended_at=timezone.now(),
            **(latency.as_fields() if latency is not None else {}),
        )
        _session_update_audio(session_id, audio_bytes, bytes_per_second, audio_seconds)


def session_heartbeat(
    *,
    session_id: uuid.UUID,
    audio_bytes: int,
    bytes_per_second: float | None,
    audio_seconds: float | None = None,
) -> None:
    """A live session says so, with the audio received so far."""
    AudioSession.objects.filter(
        pk=session_id, status=AudioSession.Status.ACTIVE
    ).update(heartbeat_at=timezone.now())
    _session_update_audio(session_id, audio_bytes, bytes_per_second, audio_seconds)


def session_language_identified(
    *, session_id: uuid.UUID, language: str, probability: float
) -> None:
    """language=auto: the language the session's speech was identified as (the
    batch worker speaks replies in it, the receiver's document names it)."""
    AudioSession.objects.filter(pk=session_id).update(
        detected_language=language, language_probability=probability
    )


def session_take_over(*, session_id: uuid.UUID) -> bool:
    """This process serves an active session from now on (a resume from another
    server): its process fields and heartbeat. False: it is not active any more."""
    return bool(
        AudioSession.objects.filter(
            pk=session_id, status=AudioSession.Status.ACTIVE
        ).update(
            heartbeat_at=timezone.now(),
            released_at=None,
            close_code=None,
            close_reason="",
            **server_process.current(),
        )
    )


def session_release(
    *,
    session_id: uuid.UUID,
    close_code: int,
    reason: str,
    audio_bytes: int,
    bytes_per_second: float | None,
    audio_seconds: float | None = None,
) -> bool:
    """A shutting-down server lets go of a resumable session it closed (1001): it
    stays active, for any server to take over at once; `close_code` and `reason`
    are how it ends if nobody resumes it (`sessions_close_abandoned`)."""
    with transaction.atomic():
        released = AudioSession.objects.filter(
            pk=session_id, status=AudioSession.Status.ACTIVE
        ).update(
            released_at=timezone.now(),
            heartbeat_at=timezone.now(),
            close_code=close_code,
            close_reason=reason[:200],
        )
        _session_update_audio(session_id, audio_bytes, bytes_per_second, audio_seconds)
    return bool(released)


def batch_reply_numbered(*, batch_id: str, seq: int) -> None:
    """The seq a batch's reply was sent with (a resumable session)."""
    ReceiverBatch.objects.filter(batch_id=batch_id).update(reply_seq=seq)


def sessions_close_abandoned() -> int:
    """Close the records of sessions whose server stopped without closing them.

    Those of this host's processes that are gone (`server_process.is_running`),
    whatever their heartbeat says, and any whose heartbeat stopped (other hosts
    cannot be asked). Each becomes failed, ended at its last heartbeat, with an
    error saying why; what was said (its finals and batches) stays. A resumable
    session is left alone within its resume window (RESUME_SECONDS after its last
    heartbeat, a heartbeat's time added). Returns how many were closed.
    """
    message = "The server stopped before the session ended."
    # A resumable session of a stopped server may be resumed here (taken over):
    # it is left for its resume window, and closed by a later call.
    window = timezone.now() - dt.timedelta(
        seconds=settings.RESUME_SECONDS + HEARTBEAT_SECONDS
    )
    # One its server released (shutting down) has RESUME_SECONDS from then.
    released_window = timezone.now() - dt.timedelta(seconds=settings.RESUME_SECONDS)
    gone = [
        pk
        for pk, pid, started, parameters, heartbeat, released in (
            AudioSession.objects.filter(
                status=AudioSession.Status.ACTIVE, server_host=server_process.HOST
            ).values_list(
                "pk",
                "server_pid",
                "server_started_at",
                "parameters",
                "heartbeat_at",
                "released_at",
            )
        )
        if (released is not None and released < released_window)
        or (
            released is None
            and not server_process.is_running(pid, started)
            and not (parameters.get("resumable") and heartbeat > window)
        )
    ]
    closed = 0
    for session in _abandoned(gone).only(
        "pk", "heartbeat_at", "released_at", "close_code", "close_reason"
    ):
        # Released by a server that shut down, and not resumed: it ends as that
        # shutdown closed it (1001, not a failure), when it closed it.
        released = session.released_at is not None
        with transaction.atomic():
            updated = (
                _abandoned(gone)
                .filter(pk=session.pk)
                .update(
                    status=AudioSession.Status.COMPLETED
                    if released
                    else AudioSession.Status.FAILED,
                    ended_at=session.released_at or session.heartbeat_at,
                    close_reason=session.close_reason if released else message,
                )
            )
            if updated:
                SessionError.objects.create(
                    session_id=session.pk,
                    close_code=session.close_code if released else None,
                    kind="shutdown" if released else "abandoned",
                    message=session.close_reason if released else message,
                )
                closed += updated
    if closed:
        logger.warning("closed %d sessions abandoned by a stopped server", closed)
    return closed


def _abandoned(gone: list[uuid.UUID]) -> QuerySet[AudioSession]:
    active = AudioSession.objects.filter(status=AudioSession.Status.ACTIVE)
    return AudioSession.objects.abandoned() | active.filter(pk__in=gone)


def _session_update_audio(
    session_id: uuid.UUID,
    audio_bytes: int,
    bytes_per_second: float | None,
    audio_seconds: float | None,
) -> None:
    """The audio so far: `audio_bytes` as received, and its seconds, from the bytes
    at `bytes_per_second` or, for compressed audio (no fixed rate), `audio_seconds`
    as decoded. Never backwards (a held final stored after a later heartbeat)."""
    if audio_seconds is None:
        audio_seconds = audio_bytes / bytes_per_second if bytes_per_second else 0.0
    seconds = round(audio_seconds, 3)
    # The decoder may still hand on audio after the last bytes came.
    more = Q(audio_bytes__lt=audio_bytes) | Q(audio_seconds__lt=seconds)
    AudioSession.objects.filter(more, pk=session_id).update(
        audio_bytes=audio_bytes, audio_seconds=seconds
    )


def sessions_purge(
    *, older_than: dt.datetime, batch_size: int = 500, dry_run: bool = False
) -> Counter[str]:
    """Delete sessions started before `older_than` and all that hangs off them.

    Works in batches of `batch_size` sessions, one transaction each, so a large
    purge never holds a long lock. Live sessions (a server still serves them) are
    kept. Returns the number of rows per model label, deleted or (dry run) that
    would be deleted.
    """
    old = AudioSession.objects.filter(started_at__lt=older_than).exclude(
        pk__in=AudioSession.objects.live().values("pk")
    )
    counts: Counter[str] = Counter()
    last_pk = None
    while True:
        page = old.order_by("pk")
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        last_pk = ids[-1]
        batch = AudioSession.objects.filter(pk__in=ids)
        if dry_run:
            counts.update(_deletion_counts(batch))
        else:
            with transaction.atomic():
                _total, per_model = batch.delete()
            counts.update({label: n for label, n in per_model.items() if n})
    logger.info("purge before %s: %s", older_than.isoformat(), dict(counts))
    return counts


def _deletion_counts(sessions: QuerySet[AudioSession]) -> Counter[str]:
    """What deleting `sessions` would remove, by model label, without deleting: the
    sessions and the rows that cascade from them (one level: nothing cascades from
    those)."""
    counts: Counter[str] = Counter({AudioSession._meta.label: sessions.count()})
    for relation in AudioSession._meta.related_objects:
        model = relation.related_model
        if relation.on_delete is models.CASCADE and isinstance(model, type):
            rows = model._default_manager.filter(
                **{f"{relation.field.name}__in": sessions}
            )
            counts[model._meta.label] += rows.count()
    return +counts
