"""The HTTP side's answers to hostile requests, sent exactly as written to a real daphne
(docs/operations.md §11): http.client writes the request target as given, like
`curl --path-as-is`, so `//evil.example/` reaches the server as it stands."""

import http.client
import json
import re
import socket
import sys
import time
from http.cookies import SimpleCookie
from urllib.parse import quote, urlencode

import pytest

from tests.e2e.servers import free_port, run_daphne, run_process

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


def eventually(check, seconds: float = 15):
    """check()'s first true result, polled (bounded)."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)
    return result


def output_holding(read, marker: str) -> str:
    """read()'s text once it holds `marker` (bounded)."""
    return eventually(lambda: text if marker in (text := read()) else None)


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
        (
            "//evil.example/?next=/%3Ftoken%3Dvp_abcdefghijkl",
            "/%2Fevil.example/?next=/",
        ),
    ],
)
def test_a_token_url_with_a_network_path_is_redirected_to_a_path(
    server, method, status, target, location
):
    got, headers, _ = send(
        server, method, target, body=b"" if method == "POST" else None
    )
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


# --- 9. No client writes a log line of its own ---------------------------------------

FORGED = "2099-01-01 00:00:00,000 ERROR forged"


def lines_forged(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lstrip().startswith("2099")]


def test_a_login_username_cannot_forge_a_log_line(server):
    """django-axes logs every failed login with what the client sent. It masks the
    username today (AXES_SENSITIVE_PARAMETERS; were it ever written, the plain
    format escapes it, tests/voiceproject/test_log_format.py), not the User-Agent,
    in which daphne lets ESC (a terminal's commands) through: it is escaped."""
    cookie, form_token = csrf(server, "/accounts/login/")
    body = urlencode(
        {
            "csrfmiddlewaretoken": form_token,
            "username": f"x\r\n{FORGED}",
            "password": "no",
        }
    ).encode()
    status, _, page = send(
        server,
        "POST",
        "/accounts/login/",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookie}",
            "User-Agent": "ua\x1b[2K\x1b[1Aforged",
        },
    )
    assert status == 200  # the login page again, with its error
    assert b"do not match" in page
    output = output_holding(server.output, "AXES: New login failure")
    assert 'user_agent: "ua\\x1b[2K\\x1b[1Aforged"' in output
    assert lines_forged(output) == []
    assert "\x1b" not in output


@pytest.mark.parametrize("value", ["ua\r x", "ua\x85x"])
def test_a_header_with_a_line_break_or_a_high_byte_is_refused(server, value):
    status, _, _ = send(
        server, "GET", "/accounts/login/", headers={"User-Agent": value}
    )
    assert status == 400


def test_a_path_cannot_forge_an_access_log_line(server):
    """daphne's access log writes the decoded path; it is escaped too."""
    status, _, _ = send(server, "GET", f"/nope%0D%0A{quote(FORGED)}%1B")
    assert status == 404
    output = output_holding(server.output, "/nope\\r\\n2099")
    assert lines_forged(output) == []
    assert "\x1b" not in output


def test_a_receiver_session_id_cannot_forge_a_log_line():
    """The demo receiver logs the session_id a client sent it."""
    port = free_port()
    args = [sys.executable, "manage.py", "run_receiver", "--port", str(port)]
    document = {
        "session_id": f"s\r\n{FORGED}",
        "batch_id": f"b\n{FORGED}",
        "language": "en-US",
        "transcriptions": [{"text": f"hello\r\n{FORGED}", "timestamp": "t"}],
    }
    with run_process(args, {"LOG_FORMAT": "plain"}, name="receiver") as (process, log):

        def exchange():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(json.dumps(document).encode() + b"\n")
                    sock.shutdown(socket.SHUT_WR)
                    return sock.makefile("rb").read()
            except OSError:
                assert process.poll() is None, log.read_text()
                return None

        assert eventually(exchange)
        output = output_holding(log.read_text, "replying")
    assert "session s\\r\\n2099" in output
    assert lines_forged(output) == []
