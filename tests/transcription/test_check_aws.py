"""`manage.py check_aws` against the fake Transcribe, moto's Polly, and nothing."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from moto import mock_aws

from tests.transcription.fake_transcribe import running_fake


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """No credentials anywhere the standard chains look (and no instance metadata)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _check_aws(*args) -> tuple[str, str]:
    out = StringIO()
    try:
        call_command("check_aws", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), ""


def test_no_credentials_fails_clearly(no_aws_env):
    out, error = _check_aws()
    assert "OK   region: eu-west-1" in out
    assert "FAIL credentials: none found" in out
    assert "SKIP Transcribe" in out
    assert "credentials failed" in error


def test_unreachable_services_fail_clearly(no_aws_env, monkeypatch, settings):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    settings.AWS_TRANSCRIBE_ENDPOINT = "https://127.0.0.1:9"  # nothing listens
    settings.AWS_POLLY_ENDPOINT = "http://127.0.0.1:9"
    out, error = _check_aws("--timeout", "5")
    assert "OK   credentials: env, access key …LE12" in out
    assert "FAIL Transcribe: Could not reach the transcription service" in out
    assert "FAIL Polly: Could not connect" in out
    assert "Transcribe, Polly failed" in error


def test_everything_answers(no_aws_env, monkeypatch, settings, tmp_path):
    with running_fake(tmp_path) as fake:
        fake.play.script = []
        for name, value in fake.env.items():
            monkeypatch.setenv(name, value)
        settings.AWS_TRANSCRIBE_ENDPOINT = fake.url
        with mock_aws(config={"core": {"mock_credentials": False}}):
            out, error = _check_aws()
    assert error == ""
    assert "OK   Transcribe: streaming works" in out
    assert "OK   Polly: voice Joanna spoke" in out
    assert "AWS is ready." in out
    assert fake.received[0].ended
