"""transcribe_file against a real daphne, as a script sees it (stdout not a tty)."""

import os
import subprocess
import sys

import pytest

from accounts.services import api_token_create
from tests.e2e.servers import ROOT, free_port

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="bob")
    return api_token_create(user=user, name="e2e")[1]


def transcribe_file(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "transcribe_file", "--url", url, *args],
        cwd=ROOT,
        capture_output=True,  # stdout is a pipe, not a terminal
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )


def test_partials_are_lines_when_stdout_is_not_a_terminal(echo_server, raw_token):
    result = transcribe_file(
        f"{echo_server.ws_url}/",
        "tests/fixtures/hello_world.wav",
        "--token",
        raw_token,
        "--partials",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # hello_world.wav: 43846 bytes of samples; the echo engine counts them.
    assert lines[0] == "partial: 1024 bytes"
    assert lines[-2:] == ["partial: 43846 bytes", "received 43846 bytes"]
    assert all(line.startswith("partial: ") for line in lines[:-1])
    assert result.stderr == ""


def test_without_partials_only_the_finals(echo_server, raw_token):
    result = transcribe_file(
        f"{echo_server.ws_url}/", "tests/fixtures/hello_world.wav", "--token", raw_token
    )
    assert result.stdout.splitlines() == ["received 43846 bytes"]


def test_a_refused_session_says_why_once_and_exits_1(echo_server):
    result = transcribe_file(
        f"{echo_server.ws_url}/",
        "tests/fixtures/hello_world.wav",
        "--token",
        "vp_not-a-token-anyone-has-made",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "CommandError: Invalid token: it is unknown, revoked or expired. "
        "(the server closed the session with code 1008)"
    ]


def test_no_server_says_so_in_one_line(db):
    url = f"ws://127.0.0.1:{free_port()}/"
    result = transcribe_file(
        url, "tests/fixtures/hello_world.wav", "--token", "vp_whatever-it-is"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"CommandError: cannot connect to {url}: [Errno 111] Connect call failed "
        f"('127.0.0.1', {url.split(':')[-1].rstrip('/')})"
    ]
