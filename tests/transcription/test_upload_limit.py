"""UploadLimit: bodies over MAX_UPLOAD_BYTES stop before the application reads them."""

import json

from transcription.web.upload_limit import FORM_OVERHEAD_BYTES, UploadLimit


class Reader:
    """An application that reads the whole body, then answers 200."""

    def __init__(self) -> None:
        self.read = 0
        self.disconnected = False

    async def __call__(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, path, headers, chunks):
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers}
    await app(scope, receive, send)
    return sent


async def test_a_content_length_over_the_limit_is_refused_unread(settings):
    settings.MAX_UPLOAD_BYTES = 1000
    inner = Reader()
    length = str(1000 + FORM_OVERHEAD_BYTES + 1).encode()
    sent = await call(
        UploadLimit(inner),
        "/v1/audio/transcriptions",
        [(b"content-length", length)],
        [b""],
    )
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "file_too_large"
    assert inner.read == 0


async def test_a_chunked_body_is_cut_at_the_limit(settings):
    settings.MAX_UPLOAD_BYTES = 1000
    inner = Reader()
    chunk = b"x" * 32 * 1024
    sent = await call(UploadLimit(inner), "/v1/audio/transcriptions", [], [chunk] * 4)
    assert inner.disconnected
    assert [m.get("status") for m in sent if "status" in m] == [413]


async def test_other_paths_and_small_bodies_pass(settings):
    settings.MAX_UPLOAD_BYTES = 1000
    inner = Reader()
    chunk = b"x" * 32 * 1024
    sent = await call(UploadLimit(inner), "/history/", [], [chunk] * 4)
    assert sent[0]["status"] == 200
    sent = await call(UploadLimit(Reader()), "/v1/audio/transcriptions", [], [b"abc"])
    assert sent[0]["status"] == 200
