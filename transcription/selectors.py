"""Reads for transcription sessions."""

import datetime as dt

from django.db.models import QuerySet
from django.utils import timezone

from transcription.models import AudioSession, Transcript


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
