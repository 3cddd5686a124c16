"""Reads for transcription sessions."""

import datetime as dt

from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from transcription.models import AudioSession, ReceiverBatch, Transcript


def token_active_session_count(*, token_id: int, max_age_seconds: float) -> int:
    """Sessions of a token still open (ignoring ones older than the longest session)."""
    since = timezone.now() - dt.timedelta(seconds=max_age_seconds)
    return AudioSession.objects.filter(
        token_id=token_id, status=AudioSession.Status.ACTIVE, started_at__gte=since
    ).count()


def session_list(*, username: str | None = None) -> QuerySet[AudioSession]:
    sessions = AudioSession.objects.select_related("user", "token")
    if username:
        sessions = sessions.filter(user__username=username)
    return sessions


def session_transcripts(*, session: AudioSession) -> QuerySet[Transcript]:
    return session.transcripts.order_by("seq")


def _batches_waiting(now: dt.datetime) -> QuerySet[ReceiverBatch]:
    Status = ReceiverBatch.Status
    return ReceiverBatch.objects.filter(
        Q(status__in=[Status.OPEN, Status.PENDING], due_at__lte=now)
        | Q(status=Status.CLAIMED, claimed_until__lt=now)
    )


def batches_due(*, limit: int) -> list[int]:
    """Primary keys of batches a worker may claim now, the oldest first."""
    now = timezone.now()
    return list(
        _batches_waiting(now).order_by("due_at").values_list("pk", flat=True)[:limit]
    )


def batch_next_due_at() -> dt.datetime | None:
    """When the next open or pending batch falls due (None: nothing waits)."""
    Status = ReceiverBatch.Status
    return ReceiverBatch.objects.filter(
        status__in=[Status.OPEN, Status.PENDING]
    ).aggregate(due=Min("due_at"))["due"]


def batch_document(*, batch_pk: int) -> dict:
    """The JSON document the receiver gets for a batch (SPEC §4)."""
    batch = ReceiverBatch.objects.select_related("session").get(pk=batch_pk)
    finals = batch.transcripts.order_by("seq").values_list("text", "created_at")
    return {
        "session_id": str(batch.session_id),
        "batch_id": str(batch.batch_id),
        "language": batch.session.language or "en-US",
        "transcriptions": [
            {"text": text, "timestamp": created.isoformat()} for text, created in finals
        ],
    }
