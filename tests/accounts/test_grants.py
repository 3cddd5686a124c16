"""Short-lived grants (accounts.services.grant_*) and the token subprotocol."""

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from accounts.middleware import (
    ApiTokenAuthMiddlewareStack,
    raw_token_from_scope,
    subprotocol_token,
)
from accounts.models import SessionGrant
from accounts.services import (
    api_token_authenticate,
    api_token_revoke,
    grant_authenticate,
    grant_create,
)
from accounts.tokens import GRANT_TAG, token_generate
from tests.accounts.test_middleware import Recorder, _attempt, lookups, since

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_grant_is_stored_as_a_hash_and_found_by_its_raw_value(api_token):
    token, _ = api_token
    grant, raw = grant_create(user=token.user, token=token)
    assert raw.startswith(GRANT_TAG)
    stored = SessionGrant.objects.get()
    assert raw not in (stored.digest, stored.prefix)
    assert raw.startswith(stored.prefix)
    assert grant_authenticate(raw=raw) == grant
    assert grant_authenticate(raw=raw + "x") is None
    assert api_token_authenticate(raw=raw) is None  # no API token


def test_a_grant_ends_when_it_expires_its_user_is_deactivated_or_its_token_revoked(
    settings, api_token
):
    settings.GRANT_SECONDS = 60
    token, _ = api_token
    _, raw = grant_create(user=token.user, token=token)
    later = timezone.now() + dt.timedelta(seconds=61)
    with time_machine.travel(later):
        assert grant_authenticate(raw=raw) is None
    _, raw = grant_create(user=token.user, token=None)  # from a browser session
    token.user.is_active = False
    token.user.save()
    assert grant_authenticate(raw=raw) is None
    token.user.is_active = True
    token.user.save()
    _, raw = grant_create(user=token.user, token=token)
    assert grant_authenticate(raw=raw) is not None
    api_token_revoke(token=token)
    assert grant_authenticate(raw=raw) is None


def test_expired_grants_are_deleted_when_the_user_asks_for_another(settings, api_token):
    token, _ = api_token
    grant_create(user=token.user, token=token)
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=120)):
        grant_create(user=token.user, token=token)
        assert SessionGrant.objects.count() == 1


def test_tokens_never_start_like_grants():
    assert not any(token_generate().startswith(GRANT_TAG) for _ in range(200))


@pytest.mark.parametrize(
    ("offered", "found"),
    [
        (["token", "vp_abc"], "vp_abc"),
        (["json", "token", "vp_abc"], "vp_abc"),
        (["token"], None),
        (["vp_abc"], None),
        ([], None),
    ],
)
def test_the_token_is_the_subprotocol_after_token(offered, found):
    assert subprotocol_token({"subprotocols": offered}) == found


def test_a_bearer_header_wins_over_the_subprotocol_and_the_query():
    scope = {
        "headers": [(b"authorization", b"Bearer vp_header")],
        "subprotocols": ["token", "vp_protocol"],
        "query_string": b"token=vp_query",
    }
    assert raw_token_from_scope(scope) == "vp_header"
    scope["headers"] = []
    assert raw_token_from_scope(scope) == "vp_protocol"
    scope["subprotocols"] = []
    assert raw_token_from_scope(scope) == "vp_query"


async def test_over_the_limit_a_valid_grant_is_probed_then_accepted(
    settings, api_token
):
    from channels.db import database_sync_to_async

    settings.AUTH_FAILURES_PER_MINUTE = 1
    token, _ = api_token
    _, raw = await database_sync_to_async(grant_create)(user=token.user, token=token)
    app = ApiTokenAuthMiddlewareStack(Recorder())
    bad = f"token={GRANT_TAG}guessedguessedguessed"
    assert (await _attempt(app, "203.0.113.9", query=bad))["auth_method"] == (
        "bad_token"
    )
    before = lookups()
    assert (await _attempt(app, "203.0.113.9", query=bad))["auth_method"] == (
        "throttled"
    )
    assert since(before) == {"authenticate": 0, "probe": 1}
    scope = await _attempt(app, "203.0.113.9", query=f"token={raw}")
    assert scope["auth_method"] == "grant"
    assert scope["api_token"] == token
    assert scope["user"] == token.user


def test_the_admin_lists_grants_without_their_raw_value(admin_client, api_token):
    token, _ = api_token
    grant, raw = grant_create(user=token.user, token=token)
    listing = admin_client.get("/admin/accounts/sessiongrant/")
    assert listing.status_code == 200
    assert grant.prefix in listing.content.decode()
    page = admin_client.get(f"/admin/accounts/sessiongrant/{grant.pk}/change/")
    assert page.status_code == 200
    for response in (listing, page):
        assert raw not in response.content.decode()
        assert grant.digest not in response.content.decode()
