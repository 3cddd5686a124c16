"""The built-in demo receiver (`manage.py run_receiver`): a small bot on TCP.

Its protocol: docs/protocol.md §10.

It reads one batch document (JSON and a newline, or EOF), answers with
`{"message": "…"}` and a newline, and closes; a document with `"stream": true`
(replyStream, docs/protocol.md §11) gets its answer one sentence a line. The
answer comes from a few rules about what it heard (greetings, the time, the
weather, lights, questions), so the embedded default has something sensible to
say back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import OrderedDict

from django.utils import timezone

from transcription.voice_loop.sentences import split_sentences

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
_REMEMBERED = 256

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(bye|goodbye|see you)\b"), "Goodbye! It was nice talking to you."),
    (re.compile(r"\bthank"), "You're welcome."),
    (
        re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
        "Hello! I am the demo receiver. I heard you say: {heard}.",
    ),
    (re.compile(r"\b(time|clock)\b"), "It is {time} UTC here."),
    (re.compile(r"\b(day|date|today)\b.*\?|\bwhat day\b"), "Today is {date}."),
    (
        re.compile(r"\bweather\b"),
        "I cannot look outside, but I am glad to hear about the weather.",
    ),
    (
        re.compile(r"\blights?\b.*\b(on|off)\b|\bturn (on|off)\b.*\blights?\b"),
        "I would switch the lights {switch} if I were connected to any.",
    ),
    (
        re.compile(r"^(what|who|why|how|when|where|which|can|could|do|does|is|are)\b"),
        "Good question. I am only a demo receiver, but I heard: {heard}.",
    ),
]


def demo_reply(texts: list[str]) -> str:
    """What the bot says to the finals of one batch ("" for nothing heard)."""
    heard = " ".join(t.strip() for t in texts if t.strip())
    if not heard:
        return ""
    lower = heard.lower()
    now = timezone.now()
    values = {
        "heard": heard,
        "time": f"{now:%H:%M}",
        "date": f"{now:%A %d %B}",
        "switch": "off" if re.search(r"\boff\b", lower) else "on",
    }
    for pattern, answer in _RULES:
        if pattern.search(lower):
            return answer.format(**values)
    words = len(heard.split())
    return f"You said: {heard}. That was {words} word{'s' * (words != 1)}."


class DemoReceiver:
    """The TCP server; a repeated batch_id gets the same answer (de-duplication)."""

    def __init__(self) -> None:
        self.answers: OrderedDict[str, str] = OrderedDict()

    def answer(self, document: dict) -> str:
        batch_id = str(document.get("batch_id", ""))
        if batch_id in self.answers:
            return self.answers[batch_id]
        texts = [
            str(item.get("text", ""))
            for item in document.get("transcriptions", [])
            if isinstance(item, dict)
        ]
        reply = demo_reply(texts)
        self.answers[batch_id] = reply
        while len(self.answers) > _REMEMBERED:
            self.answers.popitem(last=False)
        return reply

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            raw = await asyncio.wait_for(_read_request(reader), timeout=30)
            document = json.loads(raw.decode("utf-8"))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            reply = self.answer(document)
            logger.info(
                "session %s batch %s: replying %r",
                document.get("session_id"),
                document.get("batch_id"),
                reply,
            )
            lines = split_sentences(reply) if document.get("stream") is True else []
            for line in lines or [reply]:
                writer.write(json.dumps({"message": line}).encode() + b"\n")
                await writer.drain()
        except (ValueError, TimeoutError, ConnectionError) as exc:
            logger.warning("demo receiver: bad request: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    request = bytearray()
    while chunk := await reader.read(65536):
        request += chunk
        if len(request) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
        if b"\n" in chunk:
            break
    return bytes(request.split(b"\n", 1)[0])
