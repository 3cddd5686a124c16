"""Writes for sessions: open, store each final as it arrives, errors, end."""

import datetime as dt
import logging
import uuid
from collections import Counter

from django.conf import settings
from django.db import transaction
from django.db.models.deletion import Collector
from django.utils import timezone

from transcription.engines import StreamParams, TranscriptEvent
from transcription.models import AudioSession, SessionError, Transcript

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
        **fields,
    )


def session_reject(
    *, session: AudioSession, close_code: int, message: str, kind: str
) -> None:
    """A session refused at connect: status rejected, with its error."""
    with transaction.atomic():
        SessionError.objects.create(
            session=session, close_code=close_code, kind=kind, message=message
        )
        AudioSession.objects.filter(pk=session.pk).update(
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
) -> Transcript:
    """Store one final transcript the moment it exists, and the audio count so far."""
    with transaction.atomic():
        transcript = Transcript.objects.create(
            session_id=session_id,
            seq=seq,
            text=event.text,
            start_seconds=event.start,
            end_seconds=event.end,
            result_id=event.result_id[:64],
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
    failed: bool = False,
    audio_bytes: int,
    bytes_per_second: float | None,
) -> None:
    """Close the record of a session (only once: a second call changes nothing)."""
    status = AudioSession.Status.FAILED if failed else AudioSession.Status.COMPLETED
    with transaction.atomic():
        AudioSession.objects.filter(
            pk=session_id, status=AudioSession.Status.ACTIVE
        ).update(
            status=status,
            close_code=close_code,
            close_reason=reason[:200],
            ended_at=timezone.now(),
        )
        _session_update_audio(session_id, audio_bytes, bytes_per_second)


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
    purge never holds a long lock. Sessions that may still be live (active and
    younger than MAX_SESSION_SECONDS) are kept. Returns the number of rows per
    model label, deleted or (dry run) that would be deleted.
    """
    live_since = timezone.now() - dt.timedelta(seconds=settings.MAX_SESSION_SECONDS)
    old = AudioSession.objects.filter(started_at__lt=older_than).exclude(
        status=AudioSession.Status.ACTIVE, started_at__gte=live_since
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


def _deletion_counts(queryset) -> Counter[str]:
    """What `queryset.delete()` would remove, by model label, without deleting."""
    collector = Collector(using=queryset.db, origin=queryset)
    collector.collect(queryset)
    counts: Counter[str] = Counter()
    for model, objs in collector.data.items():
        counts[model._meta.label] += len(objs)
    for fast in collector.fast_deletes:
        counts[fast.model._meta.label] += fast.count()
    return +counts
