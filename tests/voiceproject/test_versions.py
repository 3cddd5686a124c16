"""The rule for patches of libraries: they name the versions they were written for."""

import tomllib
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from voiceproject.server.versions import TESTED, require_versions, versions_untested

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_libraries_are_the_versions_the_patches_were_written_for():
    # websocket_protocol, application_queue, flow_control, shutdown, access_log,
    # relay_speedups, the streaming dispatch and aws_compat all check their
    # libraries against these.
    assert versions_untested(TESTED) == []


def test_the_aws_sdk_is_pinned_to_the_one_version_aws_compat_was_written_for():
    spec = TESTED["amazon-transcribe"]
    assert spec.startswith("==")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"amazon-transcribe{spec}" in pyproject["project"]["dependencies"]


def test_another_version_is_refused_with_a_clear_error():
    with pytest.raises(ImproperlyConfigured) as refused:
        require_versions("voiceproject.server.flow_control", {"daphne": "<4"})
    message = str(refused.value)
    assert "voiceproject.server.flow_control" in message
    assert "daphne 4." in message
    assert "(tested: <4)" in message


def test_a_missing_library_is_refused():
    assert versions_untested({"no-such-library-here": ">=1"}) == [
        "no-such-library-here missing (tested: >=1)"
    ]


def test_relay_speedups_fall_back_with_a_warning_on_other_versions(monkeypatch, caplog):
    from voiceproject.server import relay_speedups, session_middleware

    monkeypatch.setattr(relay_speedups, "TESTED_VERSIONS", {"channels": "<1"})
    called = []
    monkeypatch.setattr(session_middleware, "install", lambda: called.append(1))
    relay_speedups.install()
    assert called == []
    assert "relay speedups off (untested channels 4." in caplog.text
