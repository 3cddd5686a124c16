"""Production settings: DJANGO_BEHIND_TLS_PROXY=true with debug off."""

import json
import secrets
import subprocess
import sys

import pytest

from tests.e2e.servers import ROOT, server_env

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
    assert f"wss://speech.example.com/?token={raw}&amp;language=en-US" in body
