"""Writes for sessions: open, store each final as it arrives, errors, end, batches."""

import datetime as dt
import logging
import uuid
from collections import Counter

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from transcription import server_process
from transcription.engines import StreamParams, TranscriptEvent
from transcription.latency import LatencySummary
from transcription.models import (
    AudioSession,
    ReceiverBatch,
    SessionError,
    Transcript,
    WorkerHeartbeat,
)

logger = logging.getLogger(__name__)


def session_start(
    *,
    user,
    token,
    auth_method: str,
    engine: str,
    params: StreamParams | None,
    client: str = "",
) -> AudioSession:
    """Record a new session as active (or, for a refused one, as the caller decides)."""
    fields = {}
    if params is not None:
        fields = {
            "language": params.language,
            "encoding": params.encoding,
            "sample_rate": params.sample_rate,
            "send_partials": params.send_partials,
            "parameters": {"detail": params.detail, **dict(params.options)},
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
    silence_seconds: float | None = None,
) -> Transcript:
    """Store one final transcript the moment it exists, and the audio count so far.

    With `silence_seconds` (a receiver is configured) the final joins the session's
    open batch in the same transaction, so every final is in exactly one batch.
    """
    with transaction.atomic():
        batch = None
        if silence_seconds is not None:
            batch = _batch_join(session_id, silence_seconds)
        transcript = Transcript.objects.create(
            session_id=session_id,
            seq=seq,
            text=event.text,
            start_seconds=event.start,
            end_seconds=event.end,
            result_id=event.result_id[:64],
            batch=batch,
        )
        _session_update_audio(session_id, audio_bytes, bytes_per_second)
    return transcript


def session_error_add(
    *, session_id: uuid.UUID, close_code: int | None, kind: str, message: str
) -> SessionError:
    logger.warning(
        "session %s error %s (%s): %s", session_id, kind, close_code, message
    )
    return SessionError.objects.create(
        session_id=session_id, close_code=close_code, kind=kind, message=message
    )


def session_end(
    *,
    session_id: uuid.UUID,
    close_code: int | None,
    reason: str = "",
    failed: bool | None = None,
    error_kind: str = "",
    audio_bytes: int,
    bytes_per_second: float | None,
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
        _session_update_audio(session_id, audio_bytes, bytes_per_second)


def session_heartbeat(
    *, session_id: uuid.UUID, audio_bytes: int, bytes_per_second: float | None
) -> None:
    """A live session says so, with the audio received so far."""
    AudioSession.objects.filter(
        pk=session_id, status=AudioSession.Status.ACTIVE
    ).update(heartbeat_at=timezone.now())
    _session_update_audio(session_id, audio_bytes, bytes_per_second)


def sessions_close_abandoned() -> int:
    """Close the records of sessions whose server stopped without closing them.

    Those of this host's processes that are gone (`server_process.is_running`),
    whatever their heartbeat says, and any whose heartbeat stopped (other hosts
    cannot be asked). Each becomes failed, ended at its last heartbeat, with an
    error saying why; what was said (its finals and batches) stays. Returns how
    many were closed.
    """
    message = "The server stopped before the session ended."
    gone = [
        pk
        for pk, pid, started in AudioSession.objects.filter(
            status=AudioSession.Status.ACTIVE, server_host=server_process.HOST
        ).values_list("pk", "server_pid", "server_started_at")
        if not server_process.is_running(pid, started)
    ]
    closed = 0
    for session in _abandoned(gone).only("pk", "heartbeat_at"):
        with transaction.atomic():
            updated = (
                _abandoned(gone)
                .filter(pk=session.pk)
                .update(
                    status=AudioSession.Status.FAILED,
                    ended_at=session.heartbeat_at,
                    close_reason=message,
                )
            )
            if updated:
                SessionError.objects.create(
                    session_id=session.pk, kind="abandoned", message=message
                )
                closed += updated
    if closed:
        logger.warning("closed %d sessions abandoned by a stopped server", closed)
    return closed


def _abandoned(gone: list[uuid.UUID]) -> QuerySet[AudioSession]:
    active = AudioSession.objects.filter(status=AudioSession.Status.ACTIVE)
    return AudioSession.objects.abandoned() | active.filter(pk__in=gone)


def _session_update_audio(
    session_id: uuid.UUID, audio_bytes: int, bytes_per_second: float | None
) -> None:
    seconds = audio_bytes / bytes_per_second if bytes_per_second else 0.0
    AudioSession.objects.filter(pk=session_id, audio_bytes__lt=audio_bytes).update(
        audio_bytes=audio_bytes, audio_seconds=round(seconds, 3)
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


def _batch_join(session_id: uuid.UUID, silence_seconds: float) -> ReceiverBatch:
    """The open batch, its silence restarted; a new one if a worker took the last."""
    due_at = timezone.now() + dt.timedelta(seconds=silence_seconds)
    batch = (
        ReceiverBatch.objects.select_for_update()
        .filter(session_id=session_id, status=ReceiverBatch.Status.OPEN)
        .first()
    )
    if batch is None:
        return ReceiverBatch.objects.create(session_id=session_id, due_at=due_at)
    # Conditional, so that a worker's claim in between is never undone.
    ReceiverBatch.objects.filter(pk=batch.pk, status=ReceiverBatch.Status.OPEN).update(
        due_at=due_at
    )
    return batch


def batch_flush(*, session_id: uuid.UUID) -> None:
    """END_OF_STREAM: the session's open batch is due now, without the silence."""
    ReceiverBatch.objects.filter(
        session_id=session_id, status=ReceiverBatch.Status.OPEN
    ).update(due_at=timezone.now())


def batch_claim(*, batch_pk: int, worker_id: str, lease_seconds: float) -> bool:
    """Take a due batch for one worker (one atomic UPDATE: no two workers at once).

    A claim whose lease ran out (its worker died) can be taken again: delivery is at
    least once, and the stable batch_id lets the receiver de-duplicate. Every claim
    is an attempt; none is taken past RECEIVER_MAX_ATTEMPTS (batches_give_up_exhausted
    fails those).
    """
    now = timezone.now()
    claimable = ReceiverBatch.objects.claimable(now)
    taken = claimable.filter(pk=batch_pk).update(
        status=ReceiverBatch.Status.CLAIMED,
        claimed_by=worker_id[:100],
        claimed_until=now + dt.timedelta(seconds=lease_seconds),
        attempts=F("attempts") + 1,
    )
    return taken == 1


def batch_release(*, batch_pk: int, worker_id: str) -> bool:
    """A stopping worker gives back a claim it will not finish: pending, due now,
    and the attempt not counted (it was interrupted, not failed)."""
    released = ReceiverBatch.objects.filter(
        pk=batch_pk, status=ReceiverBatch.Status.CLAIMED, claimed_by=worker_id[:100]
    ).update(
        status=ReceiverBatch.Status.PENDING,
        due_at=timezone.now(),
        claimed_by="",
        claimed_until=None,
        attempts=F("attempts") - 1,
    )
    return released == 1


def batch_retry_delay(attempts: int) -> float:
    """The wait after failed attempt number `attempts`: doubling, capped at 60 s."""
    return min(settings.RECEIVER_RETRY_SECONDS * 2 ** max(attempts - 1, 0), 60.0)


def batch_record_failure(
    *, batch_pk: int, worker_id: str, message: str, retry: bool
) -> ReceiverBatch | None:
    """A failed exchange: pending again after a backoff, or failed for good.

    It fails for good when the error is not worth retrying (a bad reply) or after
    RECEIVER_MAX_ATTEMPTS. The session gets an error on the first failure and when
    the batch is given up, not on every retry.
    """
    with transaction.atomic():
        batch = _batch_owned(batch_pk, worker_id)
        if batch is None:
            return None
        Status = ReceiverBatch.Status
        retry_in = None
        if retry and batch.attempts < settings.RECEIVER_MAX_ATTEMPTS:
            retry_in = batch_retry_delay(batch.attempts)
        batch.last_error = message
        batch.claimed_until = None
        if retry_in is None:
            batch.status = Status.FAILED
        else:
            batch.status = Status.PENDING
            batch.due_at = timezone.now() + dt.timedelta(seconds=retry_in)
        batch.save(update_fields=["last_error", "claimed_until", "status", "due_at"])
        if retry_in is None or batch.attempts == 1:
            outcome = "retrying" if retry_in is not None else "gave up"
            session_error_add(
                session_id=batch.session_id,
                close_code=None,
                kind="receiver",
                message=f"Batch {batch.batch_id} attempt {batch.attempts} "
                f"({outcome}): {message}",
            )
    return batch


def batches_give_up_exhausted() -> list[ReceiverBatch]:
    """Fail the batches whose every attempt is used but which no attempt will finish.

    A worker that dies mid-exchange leaves its claim to run out; the claim is taken
    again (another attempt) until RECEIVER_MAX_ATTEMPTS, and then never: it is
    failed here, with the error recorded on the session. Returns those failed now.
    """
    now = timezone.now()
    failed = []
    for pk in ReceiverBatch.objects.exhausted(now).values_list("pk", flat=True)[:100]:
        with transaction.atomic():
            batch = (
                ReceiverBatch.objects.exhausted(now)
                .select_for_update()
                .filter(pk=pk)
                .first()
            )
            if batch is None:
                continue  # another worker got there first
            if batch.status == ReceiverBatch.Status.CLAIMED:
                message = (
                    f"Gave up after {batch.attempts} attempts: the last one never "
                    "finished (its worker stopped or its lease ran out)."
                )
            else:
                message = f"Gave up after {batch.attempts} attempts."
            if batch.last_error:
                message += f" Last error: {batch.last_error}"
            batch.status = ReceiverBatch.Status.FAILED
            batch.claimed_until = None
            batch.last_error = message
            batch.save(update_fields=["status", "claimed_until", "last_error"])
            session_error_add(
                session_id=batch.session_id,
                close_code=None,
                kind="receiver",
                message=f"Batch {batch.batch_id} attempt {batch.attempts} (gave up): "
                f"{message}",
            )
            failed.append(batch)
    return failed


def batch_record_reply(
    *,
    batch_pk: int,
    worker_id: str,
    reply: str,
    audio: bytes | None,
    tts_engine: str,
    tts_error: str,
) -> ReceiverBatch | None:
    """The receiver's reply and the speech made of it: the batch is delivered."""
    with transaction.atomic():
        batch = _batch_owned(batch_pk, worker_id)
        if batch is None:
            return None
        TtsStatus = ReceiverBatch.TtsStatus
        batch.status = ReceiverBatch.Status.DELIVERED
        batch.delivered_at = timezone.now()
        batch.claimed_until = None
        batch.reply_text = reply
        batch.last_error = ""
        batch.tts_engine = tts_engine if reply else ""
        batch.tts_error = tts_error
        batch.tts_status = (
            TtsStatus.NONE
            if not reply
            else TtsStatus.FAILED
            if tts_error
            else TtsStatus.OK
        )
        batch.reply_audio = audio if settings.REPLY_AUDIO_STORE else None
        batch.save()
        if tts_error:
            session_error_add(
                session_id=batch.session_id,
                close_code=None,
                kind="tts",
                message=f"Batch {batch.batch_id}: the reply was sent without audio: "
                f"{tts_error}",
            )
    return batch


def _batch_owned(batch_pk: int, worker_id: str) -> ReceiverBatch | None:
    """The batch if this worker still holds it (its lease may have been taken over)."""
    batch = (
        ReceiverBatch.objects.select_for_update()
        .filter(pk=batch_pk, status=ReceiverBatch.Status.CLAIMED, claimed_by=worker_id)
        .first()
    )
    if batch is None:
        logger.warning("batch %s: lost the claim of worker %s", batch_pk, worker_id)
    return batch


def worker_heartbeat(*, worker_id: str) -> None:
    """A batch worker says it is alive (/readyz looks for a recent one).

    Rows of workers silent for a day are deleted on the way: names with a pid in
    them would otherwise pile up.
    """
    now = timezone.now()
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id[:100], defaults={"seen_at": now}
    )
    WorkerHeartbeat.objects.filter(seen_at__lt=now - dt.timedelta(days=1)).delete()
