"""LOG_FORMAT=json, and one log line per session event with the session id."""

import json
import logging
import subprocess
import sys

import pytest

from tests.e2e.servers import ROOT
from tests.helpers import eventually, receive_until_close
from transcription.models import AudioSession
from transcription.operations.log_format import JsonFormatter

SESSION = "3f2a9c1e-0b1d-4c6e-9a7f-1234567890ab"


def _record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "transcription.streaming.consumer",
        logging.INFO,
        __file__,
        1,
        message,
        args,
        exc_info,
    )


def test_json_line_with_the_session_id():
    line = JsonFormatter().format(_record("session %s ended (%s)", SESSION, 1000))
    entry = json.loads(line)
    assert entry["message"] == f"session {SESSION} ended (1000)"
    assert entry["session_id"] == SESSION
    assert entry["level"] == "INFO"
    assert entry["logger"] == "transcription.streaming.consumer"
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_json_line_with_an_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("batch worker failed", exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "session_id" not in entry
    assert "ValueError: boom" in entry["exception"]


def test_log_format_setting_selects_the_formatter():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('transcription').warning('session %s started', "
        f"'{SESSION}')"
    )
    env = {"LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "voiceproject.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stderr.strip())["session_id"] == SESSION


def _base_env() -> dict[str, str]:
    import os

    return {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "DJANGO_SECRET_KEY": "log-test-key",
    }


@pytest.mark.django_db(transaction=True)
async def test_session_start_and_end_are_logged_with_its_id(
    echo_engine, connect, api_token, caplog
):
    caplog.set_level(logging.INFO, logger="transcription")
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"\0" * 3200)
    await ws.send_to(text_data="END_OF_STREAM")
    await receive_until_close(ws)
    # The end is logged just before it is recorded, after the close.
    await eventually(lambda: AudioSession.objects.filter(status="completed").exists())

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("transcr")]
    started = [line for line in lines if line.endswith("started (echo)")]
    [line] = started
    session_id = line.split()[1]
    assert f"session {session_id} ended (1000): 0.1 s of audio, 1 finals" in lines
