"""Writes for accounts: create, authenticate (records last use), revoke API tokens."""

import datetime as dt
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken, SessionGrant
from accounts.tokens import (
    grant_generate,
    grant_prefix,
    is_grant,
    token_digest,
    token_generate,
    token_looks_valid,
    token_matches,
    token_prefix,
)

# A token's last use is recorded at most this often: it tells a stale token from one
# in use, which needs no finer grain than a write per token per minute.
LAST_USED_EVERY = dt.timedelta(minutes=1)


class TokenNotFound(Exception):
    """No token matches what was given."""


class TokenLimitReached(Exception):
    """The user already holds MAX_TOKENS_PER_USER usable tokens."""


def api_token_check_limit(*, user: User) -> None:
    """Raise TokenLimitReached when `user` may not hold one more token.

    Only usable tokens count: revoked and expired ones no longer work, so revoking is
    how a user makes room (and expired ones make room by themselves).
    """
    limit = settings.MAX_TOKENS_PER_USER
    if ApiToken.objects.usable().filter(user=user).count() >= limit:
        raise TokenLimitReached(
            f"{user.get_username()} has reached the limit of {limit} usable API "
            "tokens: revoke one before creating another."
        )


def api_token_create(
    *,
    user: User,
    name: str = "default",
    expires_at: dt.datetime | None = None,
    raw: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; return it with the raw value, which exists nowhere else.

    `raw` registers a value made earlier (only the local demo does: its token is kept
    in .env across a new database). Raises TokenLimitReached when the user holds
    MAX_TOKENS_PER_USER usable tokens.
    """
    raw = raw or token_generate()
    with transaction.atomic():
        # Lock the user's row so that two creations at once cannot both pass the
        # check (SQLite serializes writers anyway).
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        api_token_check_limit(user=user)
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=token_prefix(raw),
            digest=token_digest(raw),
            expires_at=expires_at,
        )
    return token, raw


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The usable token for `raw`, with its last use recorded (at most once every
    LAST_USED_EVERY); None if none matches."""
    if not token_looks_valid(raw):
        return None
    for token in ApiToken.objects.usable().filter(prefix=token_prefix(raw)):
        if token_matches(raw, token.digest):
            _api_token_record_use(token=token)
            return ApiToken.objects.select_related("user").get(pk=token.pk)
    return None


def grant_create(*, user: User, token: ApiToken | None) -> tuple[SessionGrant, str]:
    """A grant for `user` valid GRANT_SECONDS (asked for by `token`, or by a logged-in
    browser session when None); return it with the raw value, which exists nowhere
    else. The user's grants that expired are deleted on the way."""
    raw = grant_generate()
    now = timezone.now()
    with transaction.atomic():
        SessionGrant.objects.filter(user=user, expires_at__lte=now).delete()
        grant = SessionGrant.objects.create(
            user=user,
            token=token,
            prefix=grant_prefix(raw),
            digest=token_digest(raw),
            expires_at=now + dt.timedelta(seconds=settings.GRANT_SECONDS),
        )
    return grant, raw


def grant_authenticate(*, raw: str) -> SessionGrant | None:
    """The usable grant for `raw` (with its user and token), or None. A read only."""
    if not is_grant(raw) or not token_looks_valid(raw):
        return None
    grants = SessionGrant.objects.usable().select_related("user", "token")
    for grant in grants.filter(prefix=grant_prefix(raw)):
        if token_matches(raw, grant.digest):
            return grant
    return None


def _api_token_record_use(*, token: ApiToken) -> None:
    # Conditional, so that a burst of connections with one token (concurrent ones
    # too) writes its row once a minute, not once per connection.
    now = timezone.now()
    ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY),
        pk=token.pk,
    ).update(last_used_at=now)


def api_token_find(*, prefix_or_raw: str) -> ApiToken:
    """One token by its prefix or raw value; raises TokenNotFound if none or several."""
    value = prefix_or_raw.strip()
    if len(value) > len(token_prefix(value)):
        matches = ApiToken.objects.filter(
            Q(digest=token_digest(value)) | Q(prefix=value)
        )
    else:
        matches = ApiToken.objects.filter(prefix=value)
    found = list(matches[:2])
    if len(found) != 1:
        raise TokenNotFound(
            "no token has that prefix" if not found else "several tokens match"
        )
    return found[0]


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token (idempotent): it stops working at once."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def user_get_or_create(*, username: str, create: bool) -> User:
    user_model = get_user_model()
    if create:
        user, _ = user_model.objects.get_or_create(username=username)
        return user
    return user_model.objects.get(username=username)


def api_token_rotate(*, token: ApiToken) -> tuple[ApiToken, str]:
    """Revoke `token` and create its successor (same user, name and expiry).

    Returns the new token with its raw value, which exists nowhere else.
    """
    if token.revoked_at is not None:
        raise ValueError("a revoked token cannot be rotated; create a new one")
    with transaction.atomic():
        api_token_revoke(token=token)
        return api_token_create(
            user=token.user, name=token.name, expires_at=token.expires_at
        )


def demo_account_ensure(
    *, username: str, password: str | None, raw_token: str | None, token_name: str
) -> tuple[str, str]:
    """The local demo account as `make run` prints it: a staff user and an API token.

    A `password` or `raw_token` given (kept from an earlier run) is kept: a password
    that still checks is not set again, so the user's browser sessions survive; a
    token that is still usable stays, one that no record knows (a new database) is
    registered again. Missing ones, or a token revoked or expired meanwhile, are made
    anew. Other tokens named `token_name` are revoked. Returns (password, raw token).
    """
    with transaction.atomic():
        user, _ = get_user_model().objects.get_or_create(username=username)
        if password is None:
            password = secrets.token_urlsafe(9)
        if not user.check_password(password):
            user.set_password(password)  # ends the user's sessions: a new password
        user.is_staff = user.is_superuser = user.is_active = True
        user.save()
        token, raw = _demo_token_kept(
            user=user, raw=raw_token, name=token_name
        ) or api_token_create(user=user, name=token_name)
        same_name = ApiToken.objects.filter(user=user, name=token_name)
        for old in same_name.exclude(pk=token.pk):
            api_token_revoke(token=old)
    return password, raw


def _demo_token_kept(
    *, user: User, raw: str | None, name: str
) -> tuple[ApiToken, str] | None:
    """The kept demo token of `user` when it still works (registered again if no
    record knows it); None when a new one is needed."""
    if raw is None or not token_looks_valid(raw):
        return None
    found = ApiToken.objects.filter(digest=token_digest(raw)).first()
    if found is None:
        return api_token_create(user=user, name=name, raw=raw)
    usable = ApiToken.objects.usable().filter(pk=found.pk, user=user).exists()
    return (found, raw) if usable else None
