"""Login throttling by django-axes: per username and client address."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


def _login(client: Client, username: str, password: str, **extra):
    return client.post(
        LOGIN, {"username": username, "password": password, "next": "/"}, **extra
    )


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user(username="bob", password="pw-bob-12")


def test_ten_bad_passwords_lock_that_user_out_from_that_address(user, bob, settings):
    assert settings.AXES_FAILURE_LIMIT == 10
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(9):
        assert _login(attacker, "alice", "wrong").status_code == 200
    locked = _login(attacker, "alice", "wrong")
    assert locked.status_code == 429
    assert "failed 10 times" in locked.content.decode()
    assert "Try again in 15 minutes" in locked.content.decode()

    # The right password no longer gets alice in from there ...
    refused = _login(attacker, "alice", "pw-alice-1")
    assert refused.status_code == 429
    assert "_auth_user_id" not in attacker.session
    # ... but another user from the same address, and alice from another address, do.
    assert _login(attacker, "bob", "pw-bob-12")["Location"] == "/"
    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    assert _login(elsewhere, "alice", "pw-alice-1")["Location"] == "/"


def test_behind_a_local_proxy_the_forwarded_address_is_counted(user):
    def via_proxy(address: str) -> Client:
        return Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=address)

    attacker = via_proxy("203.0.113.7")
    for _ in range(10):
        _login(attacker, "alice", "wrong")
    assert _login(attacker, "alice", "pw-alice-1").status_code == 429
    # Someone else behind the same proxy is another address.
    assert _login(via_proxy("198.51.100.2"), "alice", "pw-alice-1").status_code == 302


def test_a_success_resets_the_count(user):
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(9):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", "pw-alice-1").status_code == 302
    client.post("/accounts/logout/")
    for _ in range(9):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", "pw-alice-1").status_code == 302


def test_the_lockout_ends_15_minutes_after_the_last_attempt(user, time_machine):
    time_machine.move_to("2030-01-01 12:00Z")
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(10):
        _login(client, "alice", "wrong")
    time_machine.shift(14 * 60)
    # Trying again during the lockout starts the cool-off again (axes' default).
    assert _login(client, "alice", "pw-alice-1").status_code == 429
    time_machine.shift(14 * 60)
    assert _login(client, "alice", "pw-alice-1").status_code == 429
    time_machine.shift(16 * 60)
    assert _login(client, "alice", "pw-alice-1").status_code == 302


def test_a_request_without_an_address_is_recorded_without_one(user):
    from django.test import RequestFactory

    from accounts.middleware import request_client_address

    request = RequestFactory().get("/")
    del request.META["REMOTE_ADDR"]
    assert request_client_address(request) is None
    request.META["REMOTE_ADDR"] = "203.0.113.7"
    assert request_client_address(request) == "203.0.113.7"
