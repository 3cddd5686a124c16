"""LOG_FORMAT=json: one JSON object per log line, the session id as a field."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

# Lines about a session start with "session <uuid>" (STYLE: the id in every line).
SESSION_ID = re.compile(
    r"\bsession ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
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
