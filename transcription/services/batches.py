"""Writes for the batch queue: join, flush, claim with a lease, outcomes, workers."""

import datetime as dt
import logging
import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from transcription.models import (
    ReceiverBatch,
    WorkerHeartbeat,
)
from transcription.services.errors import session_error_add

logger = logging.getLogger(__name__)


def batch_join(session_id: uuid.UUID, silence_seconds: float) -> ReceiverBatch:
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
    sent: str | None = None,
) -> ReceiverBatch | None:
    """The receiver's reply and the speech made of it: the batch is delivered.

    `sent`: what reached the session of a reply cut short by barge-in (None: all
    of it, or nothing to cut short)."""
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
        batch.reply_sent = reply if sent is None else sent
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


def batch_interrupt(*, batch_id: str) -> bool:
    """Barge-in: the person spoke again over this batch's reply, which is not sent
    further (its worker stops at the next sentence). False while the batch is still
    open: the new speech joins it, and nothing was cut short."""
    updated = (
        ReceiverBatch.objects.filter(batch_id=batch_id, interrupted_at__isnull=True)
        .exclude(status=ReceiverBatch.Status.OPEN)
        .update(interrupted_at=timezone.now())
    )
    if updated:
        return True
    return ReceiverBatch.objects.filter(
        batch_id=batch_id, interrupted_at__isnull=False
    ).exists()


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
