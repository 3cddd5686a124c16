"""Recorded sessions for the operations tests, made through the services."""

import datetime as dt

from transcription import services
from transcription.engines import StreamParams, TranscriptEvent
from transcription.models import AudioSession

BYTES_PER_SECOND = 32000  # 16 kHz, 16-bit mono


def record_session(
    *,
    user=None,
    token=None,
    finals=(),
    audio_seconds: float = 0.0,
    close_code: int | None = 1000,
    error: tuple[str, str] | None = None,
    days_ago: float = 0,
    engine: str = "echo",
    refused: bool = False,
) -> AudioSession:
    """A session as the consumer records it; finals are (text, start, end) or text.

    close_code None leaves it active; `error` is (kind, message) before the close;
    `refused` records it as the consumer records a refusal at connect.
    """
    session = services.session_start(
        user=user,
        token=token,
        auth_method="token" if token else "session",
        engine=engine,
        params=StreamParams(),
    )
    audio_bytes = round(audio_seconds * BYTES_PER_SECOND)
    for seq, final in enumerate(finals, start=1):
        text, start, end = (final, None, None) if isinstance(final, str) else final
        services.transcript_add_final(
            session_id=session.pk,
            seq=seq,
            event=TranscriptEvent(text=text, is_partial=False, start=start, end=end),
            audio_bytes=audio_bytes * seq // len(finals),
            bytes_per_second=BYTES_PER_SECOND,
        )
    if refused:
        kind, message = error or ("auth", "refused")
        services.session_reject(
            session_id=session.pk, close_code=close_code, message=message, kind=kind
        )
    elif error:
        services.session_error_add(
            session_id=session.pk,
            close_code=close_code,
            kind=error[0],
            message=error[1],
        )
    if close_code is not None and not refused:
        services.session_end(
            session_id=session.pk,
            close_code=close_code,
            failed=close_code != 1000,
            audio_bytes=audio_bytes,
            bytes_per_second=BYTES_PER_SECOND,
        )
    if days_ago:
        _shift(session, dt.timedelta(days=days_ago))
    session.refresh_from_db()
    return session


def _shift(session: AudioSession, delta: dt.timedelta) -> None:
    """Move a whole session back in time, as if it had happened `delta` ago."""
    session.refresh_from_db()
    AudioSession.objects.filter(pk=session.pk).update(
        started_at=session.started_at - delta,
        heartbeat_at=session.heartbeat_at - delta,
        ended_at=session.ended_at - delta if session.ended_at else None,
    )
    for transcript in session.transcripts.all():
        transcript.created_at -= delta
        transcript.save(update_fields=["created_at"])
    for error in session.errors.all():
        error.created_at -= delta
        error.save(update_fields=["created_at"])


def record_voice_session(*, user):
    """A session with two batches: one replied with kept speech, one failed.

    Returns (session, [batch pks]).
    """
    session = services.session_start(
        user=user,
        token=None,
        auth_method="session",
        engine="echo",
        params=StreamParams(),
    )
    batch_pks = []
    for seq, text in enumerate(["what is the weather", "turn on the lights"], 1):
        final = services.transcript_add_final(
            session_id=session.pk,
            seq=seq,
            event=TranscriptEvent(text=text, is_partial=False),
            audio_bytes=BYTES_PER_SECOND * seq,
            bytes_per_second=BYTES_PER_SECOND,
            silence_seconds=0.0,
        )
        assert services.batch_claim(
            batch_pk=final.batch_id, worker_id="w", lease_seconds=30
        )
        batch_pks.append(final.batch_id)
    services.batch_record_reply(
        batch_pk=batch_pks[0],
        worker_id="w",
        reply="It is sunny.",
        audio=b"ID3-fake-mp3",
        tts_engine="espeak",
        tts_error="",
    )
    services.batch_record_failure(
        batch_pk=batch_pks[1], worker_id="w", message="connection refused", retry=False
    )
    services.session_end(
        session_id=session.pk,
        close_code=1000,
        audio_bytes=2 * BYTES_PER_SECOND,
        bytes_per_second=BYTES_PER_SECOND,
    )
    return session, batch_pks
