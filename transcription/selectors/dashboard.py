"""Reads for operators: sessions with their counts, totals and aggregates."""

import datetime as dt
from typing import TYPE_CHECKING, TypedDict

from django.db.models import (
    Count,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, TruncHour

from transcription.models import (
    AudioSession,
    ReceiverBatch,
    SessionError,
    Transcript,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


def _related_count(model, field: str = "session") -> Coalesce:
    """A correlated COUNT(*) of `model` rows pointing at the outer session.

    Subqueries rather than JOIN+COUNT so that several counts (and a search on
    transcript text) never multiply each other's rows.
    """
    rows = (
        model.objects.filter(**{field: OuterRef("pk")})
        .order_by()
        .values(field)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rows, output_field=IntegerField()), 0)


class SessionCounts(TypedDict):
    """What session_list_with_counts() adds to each session."""

    finals_count: int
    errors_count: int
    batches_count: int


if TYPE_CHECKING:
    SessionWithCounts = WithAnnotations[AudioSession, SessionCounts]


def session_list_with_counts() -> QuerySet[AudioSession]:
    """Sessions with the counts of SessionCounts annotated."""
    return AudioSession.objects.select_related("user", "token").annotate(
        finals_count=_related_count(Transcript),
        errors_count=_related_count(SessionError),
        batches_count=_related_count(ReceiverBatch),
    )


def sessions_active_now() -> int:
    """Open sessions (those of a server that stopped do not count)."""
    return AudioSession.objects.live().count()


def session_totals(*, since: dt.datetime) -> tuple[int, float]:
    """Sessions started since `since` and their seconds of audio."""
    figures = AudioSession.objects.filter(started_at__gte=since).aggregate(
        n=Count("pk"), seconds=Sum("audio_seconds")
    )
    return figures["n"], figures["seconds"] or 0.0


def close_code_counts(
    *, since: dt.datetime
) -> tuple[int, list[tuple[int | None, int]]]:
    """All sessions started since `since`, and the closed ones by close code (the
    most common first)."""
    sessions = AudioSession.objects.filter(started_at__gte=since)
    rows = (
        sessions.exclude(status=AudioSession.Status.ACTIVE)
        .order_by()
        .values("close_code")
        .annotate(n=Count("pk"))
        .order_by("-n", "close_code")
    )
    return sessions.count(), [(row["close_code"], row["n"]) for row in rows]


def audio_by_user(
    *, since: dt.datetime, limit: int = 10
) -> list[tuple[str, int, float]]:
    """(username, sessions, seconds of audio) of the users with the most audio."""
    rows = (
        AudioSession.objects.filter(started_at__gte=since, user__isnull=False)
        .order_by()
        .values("user__username")
        .annotate(n=Count("pk"), seconds=Sum("audio_seconds"))
        .order_by("-seconds", "user__username")[:limit]
    )
    return [(r["user__username"], r["n"], r["seconds"] or 0.0) for r in rows]


def latest_errors(*, limit: int = 10) -> list[SessionError]:
    return list(
        SessionError.objects.select_related("session", "session__user").order_by(
            "-created_at", "-pk"
        )[:limit]
    )


def sessions_per_hour(*, since: dt.datetime) -> dict[dt.datetime, int]:
    """Sessions started since `since`, by the hour they started (hours with none
    left out)."""
    rows = (
        AudioSession.objects.filter(started_at__gte=since)
        .annotate(hour=TruncHour("started_at"))
        .order_by()
        .values("hour")
        .annotate(n=Count("pk"))
    )
    return {row["hour"]: row["n"] for row in rows}


def final_latencies_per_hour(*, since: dt.datetime) -> dict[dt.datetime, list[float]]:
    """Each session's median final latency, by the hour it started."""
    rows = (
        AudioSession.objects.filter(
            started_at__gte=since, final_latency_p50__isnull=False
        )
        .annotate(hour=TruncHour("started_at"))
        .order_by()
        .values_list("hour", "final_latency_p50")
    )
    by_hour: dict[dt.datetime, list[float]] = {}
    for hour, latency in rows:
        by_hour.setdefault(hour, []).append(latency)
    return by_hour


def session_latencies(*, since: dt.datetime) -> tuple[list[float], list[float]]:
    """The median final and reply latencies of the sessions started since `since`
    (sessions without one left out)."""
    sessions = AudioSession.objects.filter(started_at__gte=since)
    finals = sessions.filter(final_latency_p50__isnull=False).values_list(
        "final_latency_p50", flat=True
    )
    replies = sessions.filter(reply_latency_p50__isnull=False).values_list(
        "reply_latency_p50", flat=True
    )
    return list(finals), list(replies)
