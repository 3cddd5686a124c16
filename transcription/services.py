"""Writes for sessions: open, store each final as it arrives, errors, end."""

import logging
import uuid

from django.db import transaction
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
