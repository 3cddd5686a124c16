"""Reads for transcription sessions."""

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.db import models
from django.db.models import (
    Count,
    ExpressionWrapper,
    IntegerField,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.models import ApiToken
from transcription import exports
from transcription.models import AudioSession, ReceiverBatch, SessionError, Transcript

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


def session_list(*, username: str | None = None) -> QuerySet[AudioSession]:
    sessions = AudioSession.objects.select_related("user", "token")
    if username:
        sessions = sessions.filter(user__username=username)
    return sessions


def session_transcripts(*, session: AudioSession) -> QuerySet[Transcript]:
    return session.transcripts.order_by("seq")


def session_history(*, user) -> QuerySet[AudioSession]:
    """A user's own sessions, newest first, with finals, replies and errors loaded.

    Sessions refused at connect (bad parameters, capacity) have nothing to read, so
    they are left out. Reply speech is not loaded (`has_audio` says if there is some).
    Batches that failed come with the replies; the voice loop's errors are not
    loaded with the others: the conversation tells them in plain words.
    """
    has_audio = ExpressionWrapper(
        Q(reply_audio__isnull=False), output_field=models.BooleanField()
    )
    replies = (
        ReceiverBatch.objects.filter(
            ~Q(reply_text="") | Q(status=ReceiverBatch.Status.FAILED)
        )
        .defer("reply_audio")
        .annotate(has_audio=has_audio)
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
                queryset=SessionError.objects.exclude(
                    kind__in=exports.VOICE_ERROR_KINDS
                ),
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


@dataclass(frozen=True)
class Turn:
    """One line of a conversation: what the user said, or the receiver's reply."""

    kind: str  # "final" or "reply"
    text: str
    start_seconds: float | None = None
    batch_pk: int | None = None
    has_audio: bool = False
    problem: str = ""  # in plain words: no answer, or no speech


def session_conversation(*, session: AudioSession) -> list[Turn]:
    """Finals in order, each batch's reply right after the last final it answers.

    Reads only what session_history() loaded.
    """
    replies = {b.pk: b for b in getattr(session, "replies", [])}
    turns: list[Turn] = []
    finals = list(session.transcripts.all())
    for index, final in enumerate(finals):
        turns.append(Turn("final", final.text, start_seconds=final.start_seconds))
        following = finals[index + 1].batch_id if index + 1 < len(finals) else None
        if final.batch_id in replies and following != final.batch_id:
            batch = replies.pop(final.batch_id)
            turns.append(
                Turn(
                    "reply",
                    batch.reply_text,
                    batch_pk=batch.pk,
                    has_audio=batch.has_audio,
                    problem=exports.batch_problem_for_user(batch),
                )
            )
    return turns


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


# --- Operations: counts, dashboard figures, timeline, exports ----------------

CLOSE_CODE_MEANINGS = {
    1000: "normal",
    1008: "policy (auth, parameters, quota)",
    1009: "frame too big",
    1011: "server or engine error",
    1013: "try again later",
}


def close_code_label(code: int | None) -> str:
    if code is None:
        return "none"
    meaning = CLOSE_CODE_MEANINGS.get(code)
    return f"{code} {meaning}" if meaning else str(code)


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


@dataclass(frozen=True)
class Window:
    sessions: int
    audio_minutes: float


@dataclass(frozen=True)
class CloseCodeRate:
    code: int | None
    label: str
    sessions: int
    percent: float


@dataclass(frozen=True)
class UserUsage:
    username: str
    sessions: int
    audio_minutes: float


@dataclass(frozen=True)
class Dashboard:
    active_now: int
    today: Window
    last_7_days: Window
    error_percent_7_days: float
    close_codes: list[CloseCodeRate]
    top_users: list[UserUsage]
    latest_errors: list[SessionError]


def _window(since: dt.datetime) -> Window:
    figures = AudioSession.objects.filter(started_at__gte=since).aggregate(
        n=Count("pk"), seconds=Sum("audio_seconds")
    )
    return Window(figures["n"], round((figures["seconds"] or 0.0) / 60, 1))


def sessions_active_now() -> int:
    """Open sessions (those of a server that stopped do not count)."""
    return AudioSession.objects.live().count()


def close_code_rates(*, since: dt.datetime) -> list[CloseCodeRate]:
    """Closed sessions since `since` by close code, with their share of all sessions."""
    sessions = AudioSession.objects.filter(started_at__gte=since)
    total = sessions.count()
    rows = (
        sessions.exclude(status=AudioSession.Status.ACTIVE)
        .order_by()
        .values("close_code")
        .annotate(n=Count("pk"))
        .order_by("-n", "close_code")
    )
    return [
        CloseCodeRate(
            code=row["close_code"],
            label=close_code_label(row["close_code"]),
            sessions=row["n"],
            percent=round(100 * row["n"] / total, 1) if total else 0.0,
        )
        for row in rows
    ]


def top_users_by_audio(*, since: dt.datetime, limit: int = 10) -> list[UserUsage]:
    rows = (
        AudioSession.objects.filter(started_at__gte=since, user__isnull=False)
        .order_by()
        .values("user__username")
        .annotate(n=Count("pk"), seconds=Sum("audio_seconds"))
        .order_by("-seconds", "user__username")[:limit]
    )
    return [
        UserUsage(r["user__username"], r["n"], round((r["seconds"] or 0.0) / 60, 1))
        for r in rows
    ]


def latest_errors(*, limit: int = 10) -> list[SessionError]:
    return list(
        SessionError.objects.select_related("session", "session__user").order_by(
            "-created_at", "-pk"
        )[:limit]
    )


def dashboard() -> Dashboard:
    """Every figure on the admin index."""
    now = timezone.now()
    midnight = timezone.localtime(now).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    week_ago = now - dt.timedelta(days=7)
    rates = close_code_rates(since=week_ago)
    errors = sum(r.percent for r in rates if r.code not in (None, 1000))
    return Dashboard(
        active_now=sessions_active_now(),
        today=_window(midnight),
        last_7_days=_window(week_ago),
        error_percent_7_days=round(errors, 1),
        close_codes=rates,
        top_users=top_users_by_audio(since=week_ago),
        latest_errors=latest_errors(),
    )


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened in a session, for the conversation view."""

    at: dt.datetime
    kind: str  # "start", "final", "batch", "reply", "error", "end"
    text: str
    detail: str = ""
    audio_batch_pk: int | None = None  # a reply whose speech was kept: a player
    order: int = 0  # breaks ties between entries with the same time


def _start_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    params = ", ".join(
        f"{k}={v}"
        for k, v in (
            ("language", session.language),
            ("encoding", session.encoding),
            ("sampleRate", session.sample_rate),
        )
        if v
    )
    yield TimelineEntry(session.started_at, "start", "session started", params, order=0)
    if session.ended_at:
        reason = f" ({session.close_reason})" if session.close_reason else ""
        yield TimelineEntry(
            session.ended_at,
            "end",
            f"session {session.status}",
            f"close {close_code_label(session.close_code)}{reason}",
            order=9,
        )


def _final_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    for t in session.transcripts.order_by("seq"):
        times = ""
        if t.start_seconds is not None and t.end_seconds is not None:
            times = f"{t.start_seconds:.2f} to {t.end_seconds:.2f} s of audio"
        yield TimelineEntry(t.created_at, "final", t.text, times, order=2)


def _error_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    for e in session.errors.order_by("created_at", "pk"):
        yield TimelineEntry(
            e.created_at, "error", e.message, f"{e.kind}, close {e.close_code}", order=5
        )


def _batch_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    """Batches sent to the receiver and their replies."""
    with_audio = ExpressionWrapper(
        Q(reply_audio__isnull=False), output_field=models.BooleanField()
    )
    for batch in (
        session.batches.defer("reply_audio")
        .annotate(has_audio=with_audio, finals=Count("transcripts"))
        .order_by("created_at", "pk")
    ):
        detail = f"{batch.get_status_display()}, {batch.attempts} attempt(s)"
        if batch.last_error:
            detail += f": {batch.last_error}"
        yield TimelineEntry(
            batch.due_at if batch.delivered_at is None else batch.delivered_at,
            "batch",
            f"{batch.finals} final(s) sent to the receiver",
            detail,
            order=3,
        )
        if batch.delivered_at and batch.reply_text:
            speech = f"speech {batch.tts_status or 'none'}"
            if batch.tts_error:
                speech += f": {batch.tts_error}"
            yield TimelineEntry(
                batch.delivered_at,
                "reply",
                batch.reply_text,
                speech,
                audio_batch_pk=batch.pk if batch.has_audio else None,
                order=4,
            )


# Each source turns one kind of related record into timeline entries.
TIMELINE_SOURCES: list[Callable[[AudioSession], Iterable[TimelineEntry]]] = [
    _start_entries,
    _final_entries,
    _batch_entries,
    _error_entries,
]


def session_timeline(*, session: AudioSession) -> list[TimelineEntry]:
    """The whole conversation of a session, in the order it happened."""
    entries = [entry for source in TIMELINE_SOURCES for entry in source(session)]
    return sorted(entries, key=lambda e: (e.at, e.order))


def sessions_for_export(
    *,
    username: str | None = None,
    session_ids: Iterable[uuid.UUID] | None = None,
    last: bool = False,
) -> list[AudioSession]:
    """Sessions (oldest first) with transcripts prefetched, for exports."""
    sessions = session_list_with_counts().prefetch_related(
        Prefetch("transcripts", queryset=Transcript.objects.order_by("seq"))
    )
    batches = ReceiverBatch.objects.defer("reply_audio")
    sessions = sessions.prefetch_related(
        Prefetch("batches", queryset=batches.prefetch_related("transcripts"))
    )
    if username:
        sessions = sessions.filter(user__username=username)
    if session_ids is not None:
        sessions = sessions.filter(pk__in=list(session_ids))
    if last:
        return list(sessions.order_by("-started_at", "-pk")[:1])
    return list(sessions.order_by("started_at", "pk"))


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


def batches_claimable(*, now: dt.datetime) -> QuerySet[ReceiverBatch]:
    """Batches a worker may claim: due ones, and claims whose lease ran out (their
    worker died), while attempts are left. The one home of that rule."""
    Status = ReceiverBatch.Status
    return ReceiverBatch.objects.filter(
        Q(status__in=[Status.OPEN, Status.PENDING], due_at__lte=now)
        | Q(status=Status.CLAIMED, claimed_until__lt=now),
        attempts__lt=settings.RECEIVER_MAX_ATTEMPTS,
    )


def batches_exhausted(*, now: dt.datetime) -> QuerySet[ReceiverBatch]:
    """Batches no worker may claim again but none will finish: every attempt used,
    the last one interrupted (its lease ran out), or RECEIVER_MAX_ATTEMPTS lowered."""
    Status = ReceiverBatch.Status
    return ReceiverBatch.objects.filter(
        Q(status=Status.PENDING) | Q(status=Status.CLAIMED, claimed_until__lt=now),
        attempts__gte=settings.RECEIVER_MAX_ATTEMPTS,
    )


def batches_due(*, limit: int) -> list[int]:
    """Primary keys of batches a worker may claim now, the oldest first."""
    now = timezone.now()
    return list(
        batches_claimable(now=now)
        .order_by("due_at")
        .values_list("pk", flat=True)[:limit]
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
