"""Keep API tokens out of daphne's access log.

Daphne logs HTTP requests with their query string, so `GET /?token=…` would write a raw
token to the log. Token values in logged paths are replaced by `[redacted]`.
"""

import re

TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


def redact(path: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1[redacted]", path)


def install() -> None:
    """Patch daphne's access log generator once (no-op without daphne)."""
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(AccessLogGenerator, "_redacts_tokens", False):
        return
    original = AccessLogGenerator.__call__

    def __call__(self, protocol, action, details):
        if isinstance(details.get("path"), str):
            details = {**details, "path": redact(details["path"])}
        return original(self, protocol, action, details)

    AccessLogGenerator.__call__ = __call__
    AccessLogGenerator._redacts_tokens = True
