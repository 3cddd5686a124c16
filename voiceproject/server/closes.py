"""Let daphne send the close codes and reasons that ASGI apps ask for.

Daphne hands `websocket.close` to autobahn's `sendClose`, which accepts only 1000 and
3000-4999 (the limits browsers put on *client* code) and daphne drops the reason; so
1008/1009/1011/1013, which seed 004 and SPEC §3 require, become a 1011 crash
(django/daphne#374). We send the close frame through autobahn's lower-level
`sendCloseFrame`, which any RFC 6455 code may use.
"""

from voiceproject.server.versions import require_versions, tested

TESTED_VERSIONS = tested("daphne", "autobahn")
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 for the code


def install() -> None:
    """Patch daphne's WebSocket protocol once (no-op without daphne)."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebSocketProtocol, "_close_codes_patched", False):
        return
    require_versions(__name__, TESTED_VERSIONS)
    from autobahn.util import encode_truncate

    original = WebSocketProtocol.handle_reply

    def handle_reply(self, message):
        if (
            message.get("type") == "websocket.close"
            and self.state != self.STATE_CONNECTING
        ):
            code = message.get("code") or 1000
            # UTF-8, cut to fit without splitting a character (autobahn's own rule).
            reason = encode_truncate(message.get("reason") or None, MAX_REASON_BYTES)
            self.sendCloseFrame(code=code, reasonUtf8=reason)
            return
        original(self, message)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol._close_codes_patched = True
