"""Reads for admission and access: session quotas, grants whose access ended."""

import datetime as dt
import enum
from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING, Protocol, TypeVar

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.models import ApiToken
from transcription.models import (
    AudioSession,
)

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser


class Grant(Protocol):
    """What lets a session run (streaming.access.Grant): its token, user, session."""

    @property
    def token_id(self) -> int | None: ...
    @property
    def user_id(self) -> int | None: ...
    @property
    def session_key(self) -> str | None: ...


G = TypeVar("G", bound=Grant)


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
    grants: Iterable[G], *, now: dt.datetime | None = None
) -> dict[G, str]:
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
    grant: Grant,
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
