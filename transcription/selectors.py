"""Reads for transcription sessions."""

import datetime as dt
import enum
import uuid
from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.db.models import (
    Count,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.models import ApiToken
from transcription.models import (
    VOICE_ERROR_KINDS,
    AudioSession,
    ReceiverBatch,
    SessionError,
    Transcript,
    WorkerHeartbeat,
)

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django_stubs_ext import WithAnnotations

    from transcription.access import Grant


def token_active_session_count(*, token_id: int) -> int:
    """Sessions of a token still open (those of a server that stopped do not count)."""
    return AudioSession.objects.live().filter(token_id=token_id).count()


def user_active_session_count(*, user_id: int) -> int:
    """Sessions of a user still open, whatever authenticated them (tokens, cookie)."""
    return AudioSession.objects.live().filter(user_id=user_id).count()


class AccessEnded(enum.StrEnum):
    """Why a running session's credential no longer holds (sent as its {"error"})."""

    REVOKED = "Your API token was revoked."
    EXPIRED = "Your API token expired."
    DEACTIVATED = "Your account was deactivated."
    LOGGED_OUT = "You were logged out."


def grants_revoked(
    grants: Iterable["Grant"], *, now: dt.datetime | None = None
) -> dict["Grant", str]:
    """The grants that no longer hold, each with why (an `AccessEnded` text).

    At most one query per kind (users, tokens, sessions) whatever the number of
    grants. A deleted user counts as deactivated, a deleted token as revoked. A cookie
    session ends when Django would refuse it at the next request: its row is gone or
    expired, it belongs to someone else now, or the password changed since.
    """
    grants = set(grants)
    now = now or timezone.now()
    users = _users_by_pk({g.user_id for g in grants if g.user_id is not None})
    tokens = {
        pk: (revoked_at, expires_at)
        for pk, revoked_at, expires_at in ApiToken.objects.filter(
            pk__in={g.token_id for g in grants if g.token_id is not None}
        ).values_list("pk", "revoked_at", "expires_at")
    }
    sessions = _session_data({g.session_key for g in grants if g.session_key}, now)
    revoked = {}
    for grant in grants:
        reason = _grant_ended(grant, users, tokens, sessions, now)
        if reason is not None:
            revoked[grant] = reason.value
    return revoked


def _users_by_pk(pks: set[int]) -> dict[int, "AbstractBaseUser"]:
    if not pks:
        return {}
    users = get_user_model().objects.filter(pk__in=pks).only("is_active", "password")
    return {user.pk: user for user in users}


def _session_data(keys: set[str], now: dt.datetime) -> dict[str, dict]:
    """The decoded data of the sessions that still exist, by key."""
    if not keys:
        return {}
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if issubclass(store_class, DbSessionStore):  # db and cached_db: one query
        store = store_class()
        rows = store_class.get_model_class().objects.filter(
            session_key__in=keys, expire_date__gt=now
        )
        return {
            key: store.decode(data)
            for key, data in rows.values_list("session_key", "session_data")
        }
    # Cache and file sessions: one lookup each, none of them a query. Signed-cookie
    # sessions keep nothing on the server, so their logout cannot be seen here.
    loaded = {key: store_class(session_key=key).load() for key in keys}
    return {key: data for key, data in loaded.items() if data}


def _grant_ended(
    grant: "Grant",
    users: dict[int, "AbstractBaseUser"],
    tokens: dict[int, tuple[dt.datetime | None, dt.datetime | None]],
    sessions: dict[str, dict],
    now: dt.datetime,
) -> AccessEnded | None:
    user = users.get(grant.user_id) if grant.user_id is not None else None
    if grant.user_id is not None and (user is None or not user.is_active):
        return AccessEnded.DEACTIVATED
    if grant.token_id is not None:
        if grant.token_id not in tokens or tokens[grant.token_id][0] is not None:
            return AccessEnded.REVOKED
        expires_at = tokens[grant.token_id][1]
        if expires_at is not None and expires_at <= now:
            return AccessEnded.EXPIRED
    if grant.session_key is not None:
        data = sessions.get(grant.session_key)
        if data is None or not _session_holds(data, grant.user_id, user):
            return AccessEnded.LOGGED_OUT
    return None


def _session_holds(
    data: dict, user_id: int | None, user: "AbstractBaseUser | None"
) -> bool:
    """The session is still this user's login (django.contrib.auth.get_user's test)."""
    if user is None or data.get(SESSION_KEY) != str(user_id):
        return False
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return False
    return constant_time_compare(session_hash, user.get_session_auth_hash()) or any(
        constant_time_compare(session_hash, fallback)
        for fallback in user.get_session_auth_fallback_hash()
    )


def session_history(*, user) -> QuerySet[AudioSession]:
    """A user's own sessions, newest first, with finals, replies and errors loaded.

    Sessions refused at connect (bad parameters, capacity) have nothing to read, so
    they are left out. Reply speech is not loaded (`has_audio` says if there is some).
    Batches that failed come with the replies; the voice loop's errors are not
    loaded with the others: the conversation tells them in plain words.
    """
    replies = (
        ReceiverBatch.objects.filter(
            ~Q(reply_text="") | Q(status=ReceiverBatch.Status.FAILED)
        )
        .without_audio()
        .order_by("created_at", "pk")
    )
    return (
        AudioSession.objects.filter(user=user)
        .select_related("token")
        .exclude(status=AudioSession.Status.REJECTED)
        .order_by("-started_at")
        .prefetch_related(
            Prefetch("transcripts", queryset=Transcript.objects.order_by("seq")),
            Prefetch("batches", queryset=replies, to_attr="replies"),
            Prefetch(
                "errors",
                queryset=SessionError.objects.exclude(kind__in=VOICE_ERROR_KINDS),
            ),
        )
    )


def session_latest_in_browser(*, user) -> AudioSession | None:
    """A user's newest session from the browser app (History shows it; None if none)."""
    return (
        AudioSession.objects.filter(user=user, auth_method="session")
        .exclude(status=AudioSession.Status.REJECTED)
        .order_by("-started_at")
        .only("pk")
        .first()
    )


def reply_audio_get_own(*, user, session_id, batch_pk: int) -> bytes | None:
    """A reply's MP3 in one of the user's own sessions; None if none or not theirs."""
    audio = (
        ReceiverBatch.objects.filter(
            pk=batch_pk, session_id=session_id, session__user=user
        )
        .values_list("reply_audio", flat=True)
        .first()
    )
    return bytes(audio) if audio is not None else None


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


def session_find(*, id_or_prefix: str) -> AudioSession | None:
    """A session by its id or a unique leading part of it (as the admin shows)."""
    value = id_or_prefix.strip().lower()
    try:
        return AudioSession.objects.filter(pk=uuid.UUID(value)).first()
    except ValueError:
        pass
    if len(value) < 4 or any(c not in "0123456789abcdef-" for c in value):
        return None
    found = list(AudioSession.objects.filter(pk__istartswith=value)[:2])
    return found[0] if len(found) == 1 else None


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
