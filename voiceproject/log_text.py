"""Log text from clients, made safe for a line-based log: control characters escaped.

(A home of its own: the log formats, transcription.operations.log_format, and
daphne's access log, voiceproject.server.access_log, both use it.)
"""

import re

# C0 controls (CR, LF, TAB, ESC…), DEL, C1 controls, and the Unicode line and
# paragraph separators some viewers break lines at.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\r`, `\\x1b`)."""
    return CONTROL.sub(_escape, text)
