"""Production settings: DJANGO_BEHIND_TLS_PROXY=true with debug off."""

import json
import secrets
import subprocess
import sys

import pytest

from tests.e2e.servers import ROOT, run_process, server_env
from voiceproject.placeholders import is_placeholder

pytestmark = pytest.mark.django_db

PRODUCTION = {
    "DJANGO_BEHIND_TLS_PROXY": "true",
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "speech.example.com",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env({**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_passes_under_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_the_proxy_setting_check_deploy_names_what_is_missing():
    env = {**PRODUCTION, "DJANGO_BEHIND_TLS_PROXY": "false"}
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 1
    for check in ("W004", "W008", "W012", "W016"):
        assert f"security.{check}" in result.stderr


PROBE = """
import json
from django.test import Client
c = Client(HTTP_HOST="speech.example.com")
out = {}
for path in ("/accounts/login/", "/healthz", "/readyz", "/metrics"):
    r = c.get(path)
    out[path] = [r.status_code, r.get("Location", "")]
r = c.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
out["https"] = [r.status_code, r.get("Strict-Transport-Security", "")]
out["cookie_secure"] = [r.cookies[k]["secure"] for k in r.cookies]
print(json.dumps(out))
"""


def test_plain_http_is_redirected_except_the_probes_and_https_gets_hsts():
    result = _manage("shell", "-c", PROBE, env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["/accounts/login/"] == [
        301,
        "https://speech.example.com/accounts/login/",
    ]
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert out[probe][0] != 301, probe  # served (or 404 where not installed)
    status, hsts = out["https"]
    assert status == 200
    assert hsts == "max-age=31536000; includeSubDomains; preload"
    assert out["cookie_secure"] == [True]  # csrftoken


def test_the_tokens_page_offers_wss_urls_behind_the_tls_proxy(client, user, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["speech.example.com"]
    client.force_login(user)
    response = client.post(
        "/accounts/tokens/",
        {"name": "phone", "expires_in_days": ""},
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_HOST="speech.example.com",  # as nginx passes it on
    )
    raw = response.context["raw_token"]
    body = response.content.decode()
    assert (
        'new WebSocket("wss://speech.example.com/?language=en-US&amp;encoding=pcm'
        f'&amp;sampleRate=16000", ["token", "{raw}"])'
    ) in body
    assert f"?token={raw}" not in body


# --- placeholders (deploy/voiceproject.env.example) are refused at start-up ----------

EXAMPLE = ROOT / "deploy/voiceproject.env.example"


def _example_env() -> dict[str, str]:
    """The example file as systemd's EnvironmentFile reads it."""
    lines = EXAMPLE.read_text().splitlines()
    return dict(
        line.split("=", 1) for line in lines if line and not line.startswith("#")
    )


def test_every_secret_of_the_example_is_a_placeholder_and_real_ones_are_not():
    example = _example_env()
    database_password = example["DATABASE_URL"].split(":")[2].split("@")[0]
    for value in (
        example["DJANGO_SECRET_KEY"],
        example["METRICS_TOKEN"],
        database_password,
    ):
        assert is_placeholder(value), value
    for value in ("change-me", "CHANGEME", "change_me_please", "replace-me", "secret"):
        assert is_placeholder(value), value
    for value in (
        secrets.token_urlsafe(50),
        "test-only-secret-key",  # the keys of the test run
        "e2e-test-secret-key",
        "correct-horse-battery-staple",
    ):
        assert not is_placeholder(value), value


def test_daphne_refuses_to_start_with_the_example_environment():
    args = [
        sys.executable,
        "-m",
        "daphne",
        "--port",
        "0",
        "voiceproject.asgi:application",
    ]
    with run_process(args, _example_env(), name="daphne") as (process, log):
        code = process.wait(timeout=60)
        output = log.read_text()
    assert code != 0, output
    assert (
        "ImproperlyConfigured: DJANGO_SECRET_KEY and METRICS_TOKEN and DATABASE_URL's "
        "password are still placeholders (the values in "
        "deploy/voiceproject.env.example" in output
    )
    assert _example_env()["DJANGO_SECRET_KEY"] not in output  # names, never values


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_SECRET_KEY", "change-me"),
        ("METRICS_TOKEN", "change-me-too"),
        ("REDIS_URL", "redis://:changeme@127.0.0.1:6379/0"),
    ],
)
def test_check_deploy_fails_naming_the_placeholder(name, value):
    env = {**PRODUCTION, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), name: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"django.core.exceptions.ImproperlyConfigured: {name}")
    assert "is still a placeholder" in last
