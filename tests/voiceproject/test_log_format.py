"""LOG_FORMAT=json, and one log line per session event with the session id."""

import json
import logging
import subprocess
import sys

import pytest

from tests.e2e.servers import ROOT
from tests.helpers import eventually, receive_until_close
from transcription.models import AudioSession
from transcription.operations.log_format import JsonFormatter, PlainFormatter

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


PLAIN = PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
FORGED = "2099-01-01 00:00:00,000 ERROR forged"


@pytest.mark.parametrize(
    ("sent", "written"),
    [
        (f"x\r\n{FORGED}", f"x\\r\\n{FORGED}"),
        ("a\x1b[31mb\x00c\x7f", "a\\x1b[31mb\\x00c\\x7f"),
        ("a\x85b\u2028c\td", "a\\x85b\\u2028c\\td"),
        ("é ü 日本", "é ü 日本"),  # printable text as it is
    ],
)
def test_plain_line_escapes_control_characters(sent, written):
    """A failed login's username, as django-axes would log it unmasked."""
    line = PLAIN.format(_record('AXES: New login failure by {username: "%s"}', sent))
    assert line.endswith(f'{{username: "{written}"}}')
    assert len(line.splitlines()) == 1


def test_plain_traceback_is_indented_so_it_forges_no_record():
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError:
        record = _record("session %s failed", SESSION, exc_info=sys.exc_info())
    first, *rest = PLAIN.format(record).splitlines()
    assert first.endswith(f"session {SESSION} failed")
    assert rest[0] == "    Traceback (most recent call last):"
    assert rest[-1] == f"    {FORGED}"
    assert all(line.startswith("    ") for line in rest)


def test_json_line_escapes_control_characters():
    line = JsonFormatter().format(_record("user %s", f"x\r\n{FORGED}\x1b"))
    assert len(line.splitlines()) == 1
    assert "\x1b" not in line
    assert json.loads(line)["message"] == f"user x\r\n{FORGED}\x1b"
