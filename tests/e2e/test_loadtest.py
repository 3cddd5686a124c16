"""`manage.py loadtest` against a real daphne (echo engine)."""

import subprocess
import sys

import pytest

from accounts.services import api_token_create
from tests.e2e.servers import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="loader")
    return api_token_create(user=user, name="load")[1]


def _loadtest(url: str, token: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(sys.executable, "manage.py", "loadtest", "--url", url, "--token", token),
            *("--streams", "3", "--seconds", "1", "--processes", "2", *extra),
        ],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_loadtest_reports_every_stream_and_the_echo_latency(echo_server, raw_token):
    done = _loadtest(echo_server.ws_url, raw_token)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "streams: 3 of 3 ended with 1000"
    assert lines[1] == "closes: 1000: 3"
    assert lines[2] == "finals: 3"  # the echo engine's one final per stream
    assert any(line.startswith("first partial: p50 ") for line in lines)
    [latency] = [line for line in lines if line.startswith("frame → partial")]
    assert "p50" in latency
    assert "p99" in latency


def test_loadtest_counts_refusals_by_code(echo_server):
    done = _loadtest(echo_server.ws_url, "vp_" + "x" * 43, "--fast")
    assert done.returncode == 0, done.stderr
    assert "streams: 0 of 3 ended with 1000" in done.stdout
    assert "closes: 1008: 3" in done.stdout
    assert "error (3 streams): Invalid token" in done.stdout
