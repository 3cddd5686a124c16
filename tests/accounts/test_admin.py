"""The API token admin: create (raw once), revoke, rotate, usage; never a raw token."""

import re

import pytest
from django.urls import reverse

from accounts.models import ApiToken
from accounts.services import api_token_authenticate, api_token_create
from tests.transcription.sessions import record_session

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:accounts_apitoken_changelist")
ADD = reverse("admin:accounts_apitoken_add")


def change_url(token):
    return reverse("admin:accounts_apitoken_change", args=[token.pk])


def raw_on_page(html: str) -> str:
    return re.search(r'id="raw-token" readonly size="60" value="([^"]+)"', html)[1]


def test_changelist_shows_tokens_with_usage_not_the_raw_token(admin_client, api_token):
    token, raw = api_token
    record_session(user=token.user, token=token, finals=["hi"], audio_seconds=90)
    record_session(user=token.user, token=token, audio_seconds=30)
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert token.prefix in html
    assert '<td class="field-session_count">2</td>' in html
    assert '<td class="field-audio_minutes">2.0</td>' in html
    assert raw not in html


def test_change_page_is_read_only_with_revoke_and_rotate(admin_client, api_token):
    token, raw = api_token
    response = admin_client.get(change_url(token))
    assert response.status_code == 200
    html = response.content.decode()
    assert reverse("admin:accounts_apitoken_revoke", args=[token.pk]) in html
    assert reverse("admin:accounts_apitoken_rotate", args=[token.pk]) in html
    assert 'name="name"' not in html  # no editable field
    assert 'name="_save"' not in html
    assert raw not in html


def test_add_shows_the_raw_token_once(admin_client, user):
    form = admin_client.get(ADD)
    assert form.status_code == 200
    assert 'name="expires_at_0"' in form.content.decode()
    assert 'name="_addanother"' not in form.content.decode()
    response = admin_client.post(
        ADD, {"user": user.pk, "name": "phone", "expires_at_0": "", "expires_at_1": ""}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw = raw_on_page(response.content.decode())
    token = api_token_authenticate(raw=raw)
    assert (token.user, token.name, token.expires_at) == (user, "phone", None)
    for url in (CHANGELIST, change_url(token), reverse("admin:index")):
        assert raw not in admin_client.get(url).content.decode()
    assert raw not in str(response.cookies)
    assert raw not in str(admin_client.cookies)


def test_add_refuses_an_expiry_in_the_past(admin_client, user):
    response = admin_client.post(
        ADD,
        {
            "user": user.pk,
            "name": "x",
            "expires_at_0": "2000-01-01",
            "expires_at_1": "00:00",
        },
    )
    assert response.status_code == 200
    assert "The expiry must be in the future." in response.content.decode()
    assert not ApiToken.objects.exists()


def test_add_with_an_expiry(admin_client, user):
    response = admin_client.post(
        ADD,
        {
            "user": user.pk,
            "name": "x",
            "expires_at_0": "2999-01-01",
            "expires_at_1": "12:00",
        },
    )
    token = api_token_authenticate(raw=raw_on_page(response.content.decode()))
    assert token.expires_at.year == 2999


def test_add_with_errors_shows_the_form_again(admin_client):
    response = admin_client.post(ADD, {"name": "x"})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_revoke_button_asks_then_revokes(admin_client, api_token):
    token, raw = api_token
    url = reverse("admin:accounts_apitoken_revoke", args=[token.pk])
    confirm = admin_client.get(url)
    assert confirm.status_code == 200
    assert "stops working at once" in confirm.content.decode()
    assert api_token_authenticate(raw=raw) is not None
    response = admin_client.post(url)
    assert response.status_code == 302
    assert api_token_authenticate(raw=raw) is None
    page = admin_client.get(change_url(token)).content.decode()
    assert "revoked" in page
    assert reverse("admin:accounts_apitoken_rotate", args=[token.pk]) not in page


def test_revoke_action_on_the_changelist(admin_client, user):
    first, first_raw = api_token_create(user=user, name="a")
    second, second_raw = api_token_create(user=user, name="b")
    response = admin_client.post(
        CHANGELIST,
        {"action": "revoke_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Revoked 2 token(s)." in response.content.decode()
    assert api_token_authenticate(raw=first_raw) is None
    assert api_token_authenticate(raw=second_raw) is None


def test_rotate_revokes_and_shows_the_new_token_once(admin_client, api_token):
    token, raw = api_token
    url = reverse("admin:accounts_apitoken_rotate", args=[token.pk])
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url)
    assert response.status_code == 200
    new_raw = raw_on_page(response.content.decode())
    new = api_token_authenticate(raw=new_raw)
    assert (new.user, new.name) == (token.user, token.name)
    assert api_token_authenticate(raw=raw) is None
    assert new_raw not in admin_client.get(change_url(new)).content.decode()
    # a revoked token cannot be rotated again
    again = admin_client.post(url, follow=True)
    assert "cannot be rotated" in again.content.decode()
    assert ApiToken.objects.count() == 2


@pytest.mark.parametrize("status", ["active", "revoked", "expired"])
def test_status_filter(admin_client, user, status):
    import datetime as dt

    from django.utils import timezone

    api_token_create(user=user, name="active-one")
    revoked, _ = api_token_create(user=user, name="revoked-one")
    revoked.revoked_at = timezone.now()
    revoked.save()
    api_token_create(
        user=user, name="expired-one", expires_at=timezone.now() - dt.timedelta(days=1)
    )
    html = admin_client.get(CHANGELIST, {"status": status}).content.decode()
    shown = set(re.findall(r"(active|revoked|expired)-one", html))
    assert shown == {status}


def test_non_staff_are_refused(client, user, api_token):
    token, _ = api_token
    client.force_login(user)
    for url in (
        CHANGELIST,
        ADD,
        change_url(token),
        reverse("admin:accounts_apitoken_rotate", args=[token.pk]),
        reverse("admin:accounts_apitoken_revoke", args=[token.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert client.post(reverse("admin:accounts_apitoken_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is None


def test_no_admin_page_shows_a_raw_token(admin_client, user, api_token):
    """Every changelist and change page of every registered model, after real use."""
    from django.contrib import admin

    token, raw = api_token
    created = admin_client.post(ADD, {"user": user.pk, "name": "second"})
    second_raw = raw_on_page(created.content.decode())
    session = record_session(
        user=user, token=token, finals=["hi"], close_code=1008, error=("auth", "no")
    )
    pages = [reverse("admin:index")]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        for obj in model_admin.get_queryset(_request(user))[:5]:
            pages.append(
                reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]
                )
            )
    pages.append(reverse("admin:transcription_audiosession_change", args=[session.pk]))
    assert len(pages) > 8
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert raw not in body, url
        assert second_raw not in body, url


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    return request


def test_user_page_lists_the_users_tokens(admin_client, user, api_token):
    token, raw = api_token
    response = admin_client.get(reverse("admin:auth_user_change", args=[user.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert token.prefix in html
    assert change_url(token) in html
    assert raw not in html


def test_add_beyond_the_limit_is_a_form_error(admin_client, user, settings):
    settings.MAX_TOKENS_PER_USER = 1
    api_token_create(user=user, name="only")
    response = admin_client.post(ADD, {"user": user.pk, "name": "second"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "alice has reached the limit of 1 usable API tokens" in body
    assert ApiToken.objects.filter(user=user).count() == 1


def test_rotating_an_expired_token_at_the_limit_says_why(admin_client, user, settings):
    settings.MAX_TOKENS_PER_USER = 1
    expired, _ = api_token_create(user=user, name="old")
    ApiToken.objects.filter(pk=expired.pk).update(expires_at="2000-01-01T00:00Z")
    api_token_create(user=user, name="current")
    url = reverse("admin:accounts_apitoken_rotate", args=[expired.pk])
    response = admin_client.post(url, follow=True)
    assert "has reached the limit of 1 usable API tokens" in response.content.decode()
    expired.refresh_from_db()
    assert expired.revoked_at is None  # the rotation did not happen at all


# --- Who may mint a raw token for whom (issue 20 item 4) ---------------------------


@pytest.fixture
def staff_client(client, django_user_model):
    """A staff user (not a superuser) with the permissions named, logged in."""
    from django.contrib.auth.models import Permission

    def _login(*codenames):
        staff = django_user_model.objects.create_user(
            username="staffer", password="pw-staff-1", is_staff=True
        )
        staff.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client.force_login(staff)
        return staff

    return _login


def add_form(user):
    return {"user": user.pk, "name": "mine", "expires_at_0": "", "expires_at_1": ""}


@pytest.mark.parametrize("owner", ["superuser", "other"])
def test_staff_cannot_create_a_token_for_someone_else(
    staff_client, client, admin_user, user, owner
):
    staff_client("add_apitoken", "view_apitoken")
    target = admin_user if owner == "superuser" else user
    response = client.post(ADD, add_form(target))
    assert response.status_code == 403
    assert 'id="raw-token"' not in response.content.decode()
    assert not ApiToken.objects.filter(user=target).exists()


def test_staff_may_create_their_own_token(staff_client, client):
    staff = staff_client("add_apitoken", "view_apitoken")
    response = client.post(ADD, add_form(staff))
    assert response.status_code == 200
    token = api_token_authenticate(raw=raw_on_page(response.content.decode()))
    assert token.user == staff


def test_superuser_may_create_a_token_for_anyone(admin_client, user):
    response = admin_client.post(ADD, add_form(user))
    assert response.status_code == 200
    assert (
        api_token_authenticate(raw=raw_on_page(response.content.decode())).user == user
    )


@pytest.mark.parametrize("method", ["get", "post"])
def test_staff_cannot_rotate_someone_elses_token(
    staff_client, client, admin_user, method
):
    staff_client("change_apitoken", "view_apitoken")
    token, raw = api_token_create(user=admin_user, name="root")
    url = reverse("admin:accounts_apitoken_rotate", args=[token.pk])
    response = getattr(client, method)(url)
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None
    assert ApiToken.objects.filter(user=admin_user).count() == 1
    page = client.get(change_url(token)).content.decode()
    assert url not in page  # no Rotate button to press
    assert api_token_authenticate(raw=raw) == token


def test_staff_may_rotate_their_own_token(staff_client, client):
    staff = staff_client("change_apitoken", "view_apitoken")
    token, _ = api_token_create(user=staff, name="mine")
    url = reverse("admin:accounts_apitoken_rotate", args=[token.pk])
    assert url in client.get(change_url(token)).content.decode()
    response = client.post(url)
    assert response.status_code == 200
    new = api_token_authenticate(raw=raw_on_page(response.content.decode()))
    assert new.user == staff
