"""Reads for the batch queue: what is due, when next, a batch's document."""

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db.models import (
    Count,
    Max,
    Min,
)
from django.utils import timezone

from transcription.models import (
    ReceiverBatch,
    WorkerHeartbeat,
)

if TYPE_CHECKING:
    pass


def batches_due(*, limit: int) -> list[int]:
    """Primary keys of batches a worker may claim now, the oldest first."""
    now = timezone.now()
    return list(
        ReceiverBatch.objects.claimable(now)
        .order_by("due_at")
        .values_list("pk", flat=True)[:limit]
    )


def batches_due_summary(*, now: dt.datetime) -> tuple[int, float]:
    """How many batches a worker may claim now, and how long (seconds) the oldest
    of them has been due (0.0: none)."""
    figures = ReceiverBatch.objects.claimable(now).aggregate(
        n=Count("pk"), oldest=Min("due_at")
    )
    oldest = figures["oldest"]
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
    return figures["n"], age


def worker_last_seen() -> dt.datetime | None:
    """When a batch worker last recorded its heartbeat (None: never)."""
    return WorkerHeartbeat.objects.aggregate(seen=Max("seen_at"))["seen"]


def batch_next_due_at() -> dt.datetime | None:
    """When the next open or pending batch falls due (None: nothing waits)."""
    Status = ReceiverBatch.Status
    return ReceiverBatch.objects.filter(
        status__in=[Status.OPEN, Status.PENDING]
    ).aggregate(due=Min("due_at"))["due"]


def batch_document(*, batch_pk: int) -> dict:
    """The JSON document the receiver gets for a batch (docs/protocol.md §10)."""
    return batch_delivery(batch_pk=batch_pk)[0]


def batch_delivery(*, batch_pk: int) -> tuple[dict, dict]:
    """A batch's receiver document, and the voice-loop extensions its session asked
    for (`replyStream`, `bargeIn`: docs/protocol.md §11): the document carries
    `"stream": true` for a session that streams its replies."""
    batch = ReceiverBatch.objects.select_related("session").get(pk=batch_pk)
    finals = batch.transcripts.order_by("seq").values_list("text", "created_at")
    parameters = batch.session.parameters or {}
    options = {
        "replyStream": parameters.get("replyStream") is True,
        "bargeIn": parameters.get("bargeIn") is True,
    }
    document = {
        "session_id": str(batch.session_id),
        "batch_id": str(batch.batch_id),
        "language": batch.session.spoken_language,
        "transcriptions": [
            {"text": text, "timestamp": created.isoformat()} for text, created in finals
        ],
    }
    if options["replyStream"]:
        document["stream"] = True
    return document, options


def batch_interrupted(*, batch_pk: int) -> bool:
    """Whether the person spoke again over this batch's reply (barge-in)."""
    return ReceiverBatch.objects.filter(
        pk=batch_pk, interrupted_at__isnull=False
    ).exists()


def batch_outcomes(*, batch_ids: Iterable[str]) -> list[ReceiverBatch]:
    """Those of these batches that have their outcome (answered, or failed for
    good), the oldest first: what a session whose channel layer was away picks up
    itself (`replies.stored_reply_event`)."""
    Status = ReceiverBatch.Status
    return list(
        ReceiverBatch.objects.filter(
            batch_id__in=list(batch_ids), status__in=[Status.DELIVERED, Status.FAILED]
        ).order_by("pk")
    )
