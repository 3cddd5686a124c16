"""Login and the API token pages: a user sees, creates and revokes only their own."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import api_token_authenticate, api_token_create

pytestmark = pytest.mark.django_db

TOKENS = "/accounts/tokens/"


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user(username="bob", password="pw-bob-12")


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_log_in(client):
    for path in ["/", "/history/", TOKENS]:
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"


def test_login_page_and_login(client, user):
    page = client.get("/accounts/login/?next=/")
    assert page.status_code == 200
    assert b'name="username"' in page.content
    assert b'name="password"' in page.content
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert b"do not match" in wrong.content
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "pw-alice-1", "next": "/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_logout_is_a_post_and_returns_to_login(logged_in):
    response = logged_in.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert logged_in.get(TOKENS).status_code == 302


def test_token_list_shows_only_own_tokens_and_never_a_raw_one(logged_in, user, bob):
    mine, my_raw = api_token_create(user=user, name="laptop")
    theirs, _ = api_token_create(user=bob, name="bobs-phone")
    response = logged_in.get(TOKENS)
    assert response.status_code == 200
    body = response.content.decode()
    assert "laptop" in body
    assert mine.prefix in body
    assert my_raw not in body
    assert "bobs-phone" not in body
    assert theirs.prefix not in body


def test_create_shows_the_raw_token_once_and_stores_only_its_hash(logged_in, user):
    response = logged_in.post(TOKENS, {"name": "kitchen", "expires_in_days": ""})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw = response.context["raw_token"]
    token = ApiToken.objects.get(user=user)
    assert token.name == "kitchen"
    assert token.expires_at is None
    assert raw.startswith(token.prefix)
    assert raw not in (token.digest, token.prefix)
    body = response.content.decode()
    assert body.count(raw) >= 3  # the token, its header and the browser's snippet
    assert f'["token", "{raw}"]' in body
    assert f"?token={raw}" not in body  # never in a URL
    assert api_token_authenticate(raw=raw) == token
    again = logged_in.get(TOKENS).content.decode()
    assert raw not in again


def test_create_with_an_expiry(logged_in, user):
    logged_in.post(TOKENS, {"name": "month", "expires_in_days": "30"})
    token = ApiToken.objects.get(user=user)
    expected = timezone.now() + dt.timedelta(days=30)
    assert abs(token.expires_at - expected) < dt.timedelta(minutes=1)


def test_create_rejects_a_bad_form(logged_in, user):
    response = logged_in.post(TOKENS, {"name": "", "expires_in_days": "7"})
    assert response.status_code == 200
    assert response.context["raw_token"] is None
    assert not ApiToken.objects.filter(user=user).exists()


def test_revoke_own_token(logged_in, user):
    token, raw = api_token_create(user=user, name="old")
    url = reverse("accounts:token_revoke", args=[token.pk])
    assert logged_in.get(url).status_code == 405
    response = logged_in.post(url)
    assert response.status_code == 302
    assert response["Location"] == TOKENS
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert api_token_authenticate(raw=raw) is None
    assert "revoked" in logged_in.get(TOKENS).content.decode()


def test_revoking_someone_elses_token_is_a_404(logged_in, bob):
    token, raw = api_token_create(user=bob, name="bobs")
    response = logged_in.post(reverse("accounts:token_revoke", args=[token.pk]))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert api_token_authenticate(raw=raw) == token


def test_revoke_requires_login(client, user):
    token, _ = api_token_create(user=user)
    response = client.post(reverse("accounts:token_revoke", args=[token.pk]))
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is None


def test_create_beyond_the_limit_says_why(logged_in, user, settings):
    settings.MAX_TOKENS_PER_USER = 1
    api_token_create(user=user, name="only")
    response = logged_in.post(TOKENS, {"name": "second", "expires_in_days": ""})
    assert response.status_code == 200
    assert response.context["raw_token"] is None
    assert "has reached the limit of 1 usable API tokens" in response.content.decode()
    assert ApiToken.objects.filter(user=user).count() == 1
