"""The HTTP side's answers to hostile requests, sent exactly as written to a real daphne
(docs/operations.md §11): http.client writes the request target as given, like
`curl --path-as-is`, so `//evil.example/` reaches the server as it stands."""

import http.client
import re
from http.cookies import SimpleCookie

import pytest

from tests.e2e.servers import run_daphne

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo", "LOG_FORMAT": "plain"}) as live:
        yield live


def send(server, method: str, target: str, body: bytes | None = None, headers=None):
    """(status, headers, body) of one request with `target` sent byte for byte."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# --- 1. No redirect leaves the site ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "status"), [("GET", 302), ("HEAD", 302), ("POST", 307)]
)
@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("//evil.example/?token=1", "/%2Fevil.example/"),
        ("///evil.example/?token=1&a=2", "/%2F/evil.example/?a=2"),
        ("/\\evil.example/?token=1", "/%5Cevil.example/"),
        ("//evil.example/?next=/%3Ftoken%3Dvp_abcdefghijkl", "/%2Fevil.example/?next=/"),
    ],
)
def test_a_token_url_with_a_network_path_is_redirected_to_a_path(
    server, method, status, target, location
):
    got, headers, _ = send(server, method, target, body=b"" if method == "POST" else None)
    assert got == status
    assert headers["Location"] == location


def test_a_network_path_without_a_token_is_not_redirected(server):
    status, headers, _ = send(server, "GET", "//evil.example/")
    assert status == 404
    assert headers["Location"] is None


# --- 8. Only the auth views the product uses ---------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/password_reset/",
        "/accounts/password_reset/done/",
        "/accounts/reset/MQ/set-password/",
        "/accounts/reset/done/",
        "/accounts/password_change/",
        "/accounts/password_change/done/",
    ],
)
def test_unused_auth_views_are_not_mounted(server, path):
    status, _, _ = send(server, "GET", path)
    assert status == 404
    status, _, _ = send(server, "POST", path, body=b"email=a%40example.com")
    assert status == 404


def test_login_and_logout_are_mounted(server):
    status, _, body = send(server, "GET", "/accounts/login/")
    assert status == 200
    assert b'name="password"' in body
    status, _, _ = send(server, "POST", "/accounts/logout/")
    assert status == 403  # mounted, and CSRF-protected


def csrf(server, path: str) -> tuple[str, str]:
    """(cookie, form token) from a GET of `path`."""
    status, headers, body = send(server, "GET", path)
    assert status == 200
    cookie = SimpleCookie(headers["Set-Cookie"])["csrftoken"].value
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    assert match
    return cookie, match[1].decode()
