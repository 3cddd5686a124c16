"""Log formats: LOG_FORMAT=plain (one escaped line per record) and json (one JSON
object per line, the session id as a field).

Neither lets a client write a line of its own: log messages hold client input (a
login's username, a receiver's session_id, a path), and a CR or LF in it would forge
a record in a plain log. The plain format escapes control characters in the
message, and indents the lines of a traceback, so every line that starts at the
margin is the start of a real record; JSON escapes them by itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

from voiceproject.log_text import escape_controls

# Lines about a session start with "session <uuid>" (STYLE: the id in every line).
SESSION_ID = re.compile(
    r"\bsession ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)


TRACEBACK_INDENT = "    "


class PlainFormatter(logging.Formatter):
    """`time level logger message`, one line per record; a traceback follows on
    lines indented by TRACEBACK_INDENT (each of them escaped but for its end)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._indented(super().formatStack(stack_info))

    @staticmethod
    def _indented(text: str) -> str:
        return "\n".join(
            TRACEBACK_INDENT + escape_controls(line) for line in text.splitlines()
        )


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"[, "session_id"][, "exception"]}`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if match := SESSION_ID.search(message):
            entry["session_id"] = match[1]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exception"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)
