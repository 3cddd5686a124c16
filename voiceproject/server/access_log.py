"""Keep API tokens out of daphne's access log.

Daphne logs HTTP requests with their query string, so `GET /?token=…` would write a raw
token to the log, and so would `/accounts/login/?next=%2F%3Ftoken%3D…` (the token
encoded inside another parameter). redact() replaces, in any case and however many
times percent-encoded: the value of every `token` parameter, and anything shaped like
a raw token (its tag `vp_` and at least eight token characters). Then it checks its
own work on the fully decoded result; what still looks like a token there loses the
whole query (or the whole path) rather than risk it.

daphne writes the path decoded, so `%0D%0A` in a request would end the line and
forge another: control characters are escaped as in the plain log format.
"""

import re

from accounts.tokens import REDACTED, TOKEN_TAG, text_holds_token
from voiceproject.log_text import escape_controls
from voiceproject.server.versions import require_versions, tested

TESTED_VERSIONS = tested("daphne")

# "%" encoded 0 to 4 times over ("%", "%25", "%2525", …); deeper nesting is left to the
# check on the decoded text. Bounded, so that no path makes the patterns slow.
_PERCENT = r"%(?:25){0,4}"
_EQUALS = rf"(?:=|{_PERCENT}3D)"
_AMPERSAND = rf"(?:&|{_PERCENT}26)"
TOKEN_PARAMETER = re.compile(
    rf"(token{_EQUALS})((?:(?!{_AMPERSAND})[^\s\"#])*)", re.IGNORECASE
)


def _encodable(char: str) -> str:
    return rf"(?:{re.escape(char)}|{_PERCENT}{ord(char):02X})"


# A token character (A-Z a-z 0-9 - _), literal or percent-encoded.
_TOKEN_CHAR = (
    rf"(?:[A-Za-z0-9_-]|{_PERCENT}(?:3[0-9]|4[1-9A-F]|5[0-9AF]|6[1-9A-F]|7[0-9A]|2D))"
)
RAW_TOKEN = re.compile(
    "".join(_encodable(char) for char in TOKEN_TAG) + _TOKEN_CHAR + "{8,}",
    re.IGNORECASE,
)


def redact(path: str) -> str:
    """`path` with every token value in it replaced by [redacted]."""
    redacted = TOKEN_PARAMETER.sub(rf"\1{REDACTED}", path)
    redacted = RAW_TOKEN.sub(REDACTED, redacted)
    if not text_holds_token(redacted):
        return redacted
    before, mark, _query = redacted.partition("?")
    if mark and not text_holds_token(before):
        return f"{before}?{REDACTED}"
    return REDACTED


def install() -> None:
    """Patch daphne's access log generator once (no-op without daphne).

    Written for daphne 4.x, whose AccessLogGenerator.__call__(protocol, action,
    details) formats details["path"] into every line it writes.
    """
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(AccessLogGenerator, "_redacts_tokens", False):
        return
    require_versions(__name__, TESTED_VERSIONS)
    original = AccessLogGenerator.__call__

    def __call__(self, protocol, action, details):
        if isinstance(details.get("path"), str):
            details = {**details, "path": escape_controls(redact(details["path"]))}
        return original(self, protocol, action, details)

    AccessLogGenerator.__call__ = __call__
    AccessLogGenerator._redacts_tokens = True
