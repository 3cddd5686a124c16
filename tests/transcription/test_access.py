"""Running sessions lose their access: the check of grants."""

import datetime as dt

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_create, api_token_revoke
from transcription.access import Grant
from transcription.selectors import AccessEnded, grants_revoked

User = get_user_model()


def token_grant(token) -> Grant:
    return Grant(token_id=token.pk, user_id=token.user_id)


def login_grant(user) -> tuple[Grant, Client]:
    """A browser logged in as `user` (through Django's login), and its grant."""
    client = Client()
    client.force_login(user)
    key = client.session.session_key
    return Grant(token_id=None, user_id=user.pk, session_key=key), client


# --- grants_revoked ------------------------------------------------------------


@pytest.mark.django_db
def test_usable_grants_are_not_revoked(api_token, user):
    cookie, _ = login_grant(user)
    assert grants_revoked([token_grant(api_token[0]), cookie]) == {}
    assert grants_revoked([]) == {}


@pytest.mark.django_db
def test_revoked_token(api_token):
    token = api_token_revoke(token=api_token[0])
    grant = token_grant(token)
    assert grants_revoked([grant]) == {grant: "Your API token was revoked."}


@pytest.mark.django_db
def test_deleted_token_counts_as_revoked(api_token):
    grant = token_grant(api_token[0])
    api_token[0].delete()
    assert grants_revoked([grant]) == {grant: AccessEnded.REVOKED}


@pytest.mark.django_db
def test_expired_token(user):
    expires = timezone.now() + dt.timedelta(hours=1)
    token, _ = api_token_create(user=user, expires_at=expires)
    grant = token_grant(token)
    assert grants_revoked([grant], now=expires - dt.timedelta(seconds=1)) == {}
    assert grants_revoked([grant], now=expires) == {grant: "Your API token expired."}


@pytest.mark.django_db
def test_deactivated_user_ends_tokens_and_logins(api_token, user):
    cookie, _ = login_grant(user)
    user.is_active = False
    user.save()
    grant = token_grant(api_token[0])
    reason = "Your account was deactivated."
    assert grants_revoked([grant, cookie]) == {grant: reason, cookie: reason}


@pytest.mark.django_db
def test_deleted_user_counts_as_deactivated(api_token, user):
    cookie, _ = login_grant(user)
    grant = token_grant(api_token[0])
    user.delete()
    ended = AccessEnded.DEACTIVATED
    assert grants_revoked([grant, cookie]) == {grant: ended, cookie: ended}


@pytest.mark.parametrize(
    "engine",
    [
        "django.contrib.sessions.backends.db",
        "django.contrib.sessions.backends.cached_db",
        "django.contrib.sessions.backends.cache",
    ],
)
@pytest.mark.django_db
def test_logout_through_the_logout_view(settings, user, engine):
    settings.SESSION_ENGINE = engine
    grant, client = login_grant(user)
    assert grants_revoked([grant]) == {}
    assert client.post("/accounts/logout/").status_code == 302
    assert grants_revoked([grant]) == {grant: "You were logged out."}


@pytest.mark.django_db
def test_flushed_session_is_logged_out(user):
    grant, _ = login_grant(user)
    SessionStore(session_key=grant.session_key).flush()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_expired_session_is_logged_out(user):
    grant, _ = login_grant(user)
    later = timezone.now() + dt.timedelta(days=365)
    assert grants_revoked([grant], now=later) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_session_now_holding_another_users_login(user):
    grant, _ = login_grant(user)
    bob = User.objects.create_user(username="bob")
    store = SessionStore(session_key=grant.session_key)
    store[SESSION_KEY] = str(bob.pk)
    store.save()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_password_change_logs_other_sessions_out(user):
    # What Django's own get_user() does at the next request of that browser.
    grant, _ = login_grant(user)
    user.set_password("a-new-password-2")
    user.save()
    assert grants_revoked([grant]) == {grant: AccessEnded.LOGGED_OUT}


@pytest.mark.django_db
def test_one_query_per_kind_whatever_the_number_of_grants(
    django_assert_max_num_queries,
):
    users = [User.objects.create_user(username=f"u{n}") for n in range(25)]
    grants = [token_grant(api_token_create(user=u)[0]) for u in users]
    grants += [login_grant(u)[0] for u in users]
    api_token_revoke(token=users[3].api_tokens.get())
    with django_assert_max_num_queries(3):
        revoked = grants_revoked(grants)
    assert revoked == {grants[3]: AccessEnded.REVOKED}


def test_grant_from_scope(api_token, user):
    token = api_token[0]
    assert Grant.from_scope({"auth_method": "token", "api_token": token}) == Grant(
        token_id=token.pk, user_id=user.pk
    )
    session = SessionStore(session_key="k" * 32)
    cookie = Grant.from_scope(
        {"auth_method": "session", "user": user, "session": session}
    )
    assert cookie == Grant(token_id=None, user_id=user.pk, session_key="k" * 32)
    assert "k" * 32 not in repr(cookie)  # the session key is a credential
    assert Grant.from_scope({"auth_method": "bad_token", "api_token": None}) is None
