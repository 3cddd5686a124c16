"""API tokens: generation, hashing, authentication, expiry and revocation."""

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import (
    TokenLimitReached,
    TokenNotFound,
    api_token_authenticate,
    api_token_create,
    api_token_find,
    api_token_revoke,
    api_token_rotate,
)
from accounts.tokens import token_digest, token_generate, token_matches, token_prefix


def test_generated_tokens_are_tagged_random_and_long():
    first, second = token_generate(), token_generate()
    assert first != second
    assert first.startswith("vp_")
    assert len(first) >= 40


def test_digest_matches_only_the_same_token():
    raw = token_generate()
    assert token_matches(raw, token_digest(raw))
    assert not token_matches(raw + "x", token_digest(raw))


def test_only_hash_and_prefix_are_stored(user):
    token, raw = api_token_create(user=user, name="ci")
    stored = ApiToken.objects.values().get(pk=token.pk)
    assert raw not in str(stored)
    assert stored["prefix"] == token_prefix(raw)
    assert stored["digest"] == token_digest(raw)


def test_authenticate_records_last_use(user):
    token, raw = api_token_create(user=user)
    assert token.last_used_at is None
    found = api_token_authenticate(raw=raw)
    assert found == token
    assert found.user == user
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_last_use_is_written_at_most_once_a_minute(user):
    token, raw = api_token_create(user=user)
    first = timezone.now()
    with time_machine.travel(first, tick=False):
        api_token_authenticate(raw=raw)
    with time_machine.travel(first + dt.timedelta(seconds=59), tick=False):
        assert api_token_authenticate(raw=raw) == token
    token.refresh_from_db()
    assert token.last_used_at == first
    later = first + dt.timedelta(seconds=61)
    with time_machine.travel(later, tick=False):
        api_token_authenticate(raw=raw)
    token.refresh_from_db()
    assert token.last_used_at == later


@pytest.mark.parametrize("raw", ["", "vp_short", "not-a-token-at-all-but-long-enough"])
def test_authenticate_rejects_garbage(user, raw):
    api_token_create(user=user)
    assert api_token_authenticate(raw=raw) is None


def test_authenticate_rejects_same_prefix_other_secret(user):
    _, raw = api_token_create(user=user)
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    assert api_token_authenticate(raw=forged) is None


def test_expired_revoked_and_inactive_user_tokens_do_not_work(user):
    expired, raw_expired = api_token_create(
        user=user, expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    assert expired.status == "expired"
    assert api_token_authenticate(raw=raw_expired) is None

    revoked, raw_revoked = api_token_create(user=user)
    api_token_revoke(token=revoked)
    assert revoked.status == "revoked"
    assert api_token_authenticate(raw=raw_revoked) is None

    _, raw_active = api_token_create(user=user)
    user.is_active = False
    user.save()
    assert api_token_authenticate(raw=raw_active) is None


def test_find_by_prefix_or_raw(user):
    token, raw = api_token_create(user=user)
    assert api_token_find(prefix_or_raw=token.prefix) == token
    assert api_token_find(prefix_or_raw=raw) == token
    with pytest.raises(TokenNotFound):
        api_token_find(prefix_or_raw="vp_nothing")


def test_a_user_holds_at_most_max_tokens_usable_ones(user, settings, django_user_model):
    settings.MAX_TOKENS_PER_USER = 3
    tokens = [api_token_create(user=user, name=f"t{i}")[0] for i in range(3)]
    with pytest.raises(TokenLimitReached, match="limit of 3 usable"):
        api_token_create(user=user, name="one too many")
    assert ApiToken.objects.filter(user=user).count() == 3
    # Another user is not affected.
    bob = django_user_model.objects.create_user(username="bob")
    api_token_create(user=bob)
    # Revoked and expired tokens make room; only usable ones count.
    api_token_revoke(token=tokens[0])
    api_token_create(user=user, name="after revoke")
    ApiToken.objects.filter(pk=tokens[1].pk).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    api_token_create(user=user, name="after expiry")
    assert ApiToken.objects.usable().filter(user=user).count() == 3


def test_rotating_at_the_limit_works(user, settings):
    settings.MAX_TOKENS_PER_USER = 1
    token, _ = api_token_create(user=user)
    new, raw = api_token_rotate(token=token)
    assert api_token_authenticate(raw=raw) == new


def test_status_and_its_filters_are_one_rule(user):
    past = timezone.now() - dt.timedelta(minutes=1)
    future = timezone.now() + dt.timedelta(days=1)
    made = {
        "forever": api_token_create(user=user, name="forever")[0],
        "later": api_token_create(user=user, name="later", expires_at=future)[0],
        "gone": api_token_create(user=user, name="gone")[0],
        "revoked": api_token_create(user=user, name="revoked")[0],
    }
    ApiToken.objects.filter(pk=made["gone"].pk).update(expires_at=past)
    api_token_revoke(token=made["revoked"])
    tokens = list(ApiToken.objects.all())
    statuses = sorted(t.status for t in tokens)
    assert statuses == ["active", "active", "expired", "revoked"]
    for status in ApiToken.STATUSES:
        chosen = ApiToken.objects.with_status(status)
        assert {t.pk for t in chosen} == {t.pk for t in tokens if t.status == status}
    assert set(ApiToken.objects.usable()) == set(ApiToken.objects.active())
