"""Bounded uploads: a body over MAX_UPLOAD_BYTES is refused before Django reads it.

A `Content-Length` over the limit gets its 413 at once; a body without one (chunked)
is counted as it is read, and the request ends with the 413 once it passes the limit.
(daphne itself has no limit on what it buffers: a proxy in front caps bodies too,
deploy/.)
"""

from __future__ import annotations

import json

from django.conf import settings

UPLOAD_PATHS = ("/v1/audio/",)
# Multipart framing and the small fields around the file.
FORM_OVERHEAD_BYTES = 64 * 1024


def _limit() -> int:
    return settings.MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES


def _body(size: int | None) -> bytes:
    said = f" ({size} bytes)" if size is not None else ""
    message = (
        f"The request is too large{said}: files up to {settings.MAX_UPLOAD_BYTES} "
        "bytes (MAX_UPLOAD_BYTES) are accepted."
    )
    error = {"message": message, "type": "invalid_request_error"}
    return json.dumps(
        {"error": {**error, "param": "file", "code": "file_too_large"}}
    ).encode()


async def _send_too_big(send, size: int | None) -> None:
    body = _body(size)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class UploadLimit:
    """ASGI wrapper for HTTP: bounds the bodies sent to UPLOAD_PATHS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(UPLOAD_PATHS):
            return await self.app(scope, receive, send)
        limit = _limit()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_too_big(send, int(length))
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}  # Django stops reading
            return message

        async def watched_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, watched_send)
        if over and not started:
            await _send_too_big(send, None)
