"""Reads for transcription sessions."""

import datetime as dt

from django.db.models import Prefetch, QuerySet
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


def session_history(*, user) -> QuerySet[AudioSession]:
    """A user's own sessions, newest first, with their transcripts and errors loaded.

    Sessions refused at connect (bad parameters, capacity) have nothing to read, so
    they are left out.
    """
    return (
        AudioSession.objects.filter(user=user)
        .select_related("token")
        .exclude(status=AudioSession.Status.REJECTED)
        .order_by("-started_at")
        .prefetch_related(
            Prefetch("transcripts", queryset=Transcript.objects.order_by("seq")),
            "errors",
        )
    )


def session_get_own(*, user, session_id) -> AudioSession | None:
    """The user's session with this id; None when it does not exist or is not theirs."""
    return AudioSession.objects.filter(user=user, pk=session_id).first()
