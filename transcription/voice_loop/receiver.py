"""The receiver service's client (docs/protocol.md §10): one exchange, TCP or HTTP.

TCP: connect, write one JSON document and `\\n`, shut down the write side, read the
reply until `\\n` or EOF. HTTP: POST the same JSON to RECEIVER_URL. A reply that parses
as a JSON object with a `message` key means that message; anything else is the reply
text as it stands; an empty reply means "nothing to say". Redirects are never
followed, and error messages name the receiver without RECEIVER_URL's credentials
or query string (they are stored, and shown in the admin).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from transcription.executors import run_blocking

HTTP_POOL = "receiver-http"


class ReceiverError(Exception):
    """One failed exchange; `retry` says whether trying again later may help."""

    def __init__(self, message: str, *, retry: bool):
        super().__init__(message)
        self.message = message
        self.retry = retry


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    host: str = ""
    port: int = 5001
    url: str = ""
    timeout: float = 10.0
    max_reply_bytes: int = 65536

    @property
    def address(self) -> str:
        """Where the receiver is, fit for messages: no credentials, no query."""
        return url_for_display(self.url) if self.url else f"{self.host}:{self.port}"


def url_for_display(url: str) -> str:
    """scheme://host:port/path of `url`: userinfo, query and fragment left out."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def receiver_config() -> ReceiverConfig | None:
    """The receiver the settings name, or None: no voice loop."""
    if not (settings.RECEIVER_URL or settings.RECEIVER_HOST):
        return None
    return ReceiverConfig(
        host=settings.RECEIVER_HOST,
        port=settings.RECEIVER_PORT,
        url=settings.RECEIVER_URL,
        timeout=settings.RECEIVER_TIMEOUT,
        max_reply_bytes=settings.RECEIVER_MAX_REPLY_BYTES,
    )


def exchange_budget() -> float:
    """The longest one batch may take: the receiver's answer, then its speech."""
    return settings.RECEIVER_TIMEOUT + settings.TTS_TIMEOUT


def reply_text(raw: bytes) -> str:
    """The reply's meaning: `{"message": …}` → the message, else the text itself."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ReceiverError("Receiver reply is not valid UTF-8.", retry=False) from exc
    if not text.startswith("{"):
        return text
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        # Not JSON, or nested too deeply for the parser: text as it stands. A
        # RecursionError let through would fail every attempt with no end.
        return text
    if not isinstance(document, dict) or "message" not in document:
        return text
    message = document["message"]
    if message is None:
        return ""
    if not isinstance(message, str):
        raise ReceiverError(
            f"Receiver reply has a non-text message ({type(message).__name__}).",
            retry=False,
        )
    return message.strip()


async def receiver_exchange(config: ReceiverConfig, payload: dict[str, Any]) -> str:
    """Send one batch document; return the reply text ("" for nothing to say)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    try:
        if config.url:
            raw = await asyncio.wait_for(
                run_blocking(HTTP_POOL, _http_post, config, body), config.timeout + 1
            )
        else:
            raw = await asyncio.wait_for(_tcp_exchange(config, body), config.timeout)
    except TimeoutError as exc:
        raise ReceiverError(
            f"Receiver at {config.address} did not answer within "
            f"{config.timeout:g} seconds.",
            retry=True,
        ) from exc
    return reply_text(raw)


async def _tcp_exchange(config: ReceiverConfig, body: bytes) -> bytes:
    async with _tcp_request(config, body) as reader:
        return await _read_reply(reader, config)


@contextlib.asynccontextmanager
async def _tcp_request(
    config: ReceiverConfig, body: bytes
) -> AsyncIterator[asyncio.StreamReader]:
    """The document sent as one line, then half-closed; the reply's reader. A
    connection refused or dropped is a ReceiverError to retry."""
    try:
        reader, writer = await asyncio.open_connection(config.host, config.port)
    except OSError as exc:
        raise ReceiverError(
            f"Receiver at {config.address} is unreachable: "
            f"{exc.strerror or exc.__class__.__name__}.",
            retry=True,
        ) from exc
    try:
        writer.write(body + b"\n")
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        yield reader
    except (ConnectionError, OSError) as exc:
        raise ReceiverError(
            f"Receiver at {config.address} dropped the connection: {exc}.", retry=True
        ) from exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader, config: ReceiverConfig) -> bytes:
    """Up to the first newline or EOF, refusing more than max_reply_bytes."""
    reply = bytearray()
    while chunk := await reader.read(65536):
        reply += chunk
        end = reply.find(b"\n")
        if end >= 0:
            del reply[end:]
        if len(reply) > config.max_reply_bytes:
            raise ReceiverError(_too_big(config), retry=False)
        if end >= 0:
            break
    return bytes(reply)


def _too_big(config: ReceiverConfig) -> str:
    return (
        f"Receiver reply is larger than the limit of {config.max_reply_bytes} "
        "bytes (RECEIVER_MAX_REPLY_BYTES)."
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is answered as it is: urllib would turn the POST into a GET of wherever
    the Location points, and speak that page to the user."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code)


_opener = urllib.request.build_opener(_NoRedirect)


def _http_request(config: ReceiverConfig, body: bytes) -> urllib.request.Request:
    """The POST; credentials in the URL's userinfo become a Basic Authorization."""
    parts = urllib.parse.urlsplit(config.url)
    headers = {"Content-Type": "application/json; charset=utf-8"}
    url = config.url
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.Request(  # noqa: S310 (the scheme is checked by the caller)
        url, data=body, method="POST", headers=headers
    )


def _http_post(
    config: ReceiverConfig,
    body: bytes,
    on_line: Callable[[bytes], None] | None = None,
) -> bytes:
    """Blocking POST (run on the receiver-http pool); the scheme is checked first.

    With `on_line`, a chunked answer is read line by line as it arrives, each line
    handed to `on_line` (the rest, an unfinished last line, returned)."""
    where = config.address
    if not config.url.startswith(("http://", "https://")):
        raise ReceiverError(
            f"RECEIVER_URL must be an http:// or https:// URL, not {where}.",
            retry=False,
        )
    try:
        request = _http_request(config, body)
        with _opener.open(request, timeout=config.timeout) as response:
            if on_line is not None and response.chunked:
                return _read_lines(response, config, on_line)
            raw = response.read(config.max_reply_bytes + 1)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            # Retried: where the receiver lives is its deployment's business, which
            # may be fixed before RECEIVER_MAX_ATTEMPTS run out; never followed.
            raise ReceiverError(
                f"Receiver at {where} answered HTTP {exc.code} (a redirect, not "
                "followed: set RECEIVER_URL to the address that answers).",
                retry=True,
            ) from exc
        raise ReceiverError(
            f"Receiver at {where} answered HTTP {exc.code}.",
            retry=exc.code >= 500 or exc.code == 429,
        ) from exc
    except TimeoutError:
        raise  # reported by receiver_exchange (it is an OSError, caught below)
    except (http.client.InvalidURL, ValueError) as exc:
        raise ReceiverError(
            f"RECEIVER_URL is not a valid URL ({where}).", retry=False
        ) from exc
    except http.client.HTTPException as exc:
        raise ReceiverError(
            f"Receiver at {where} sent a broken HTTP response "
            f"({exc.__class__.__name__}).",
            retry=True,
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise TimeoutError from exc
        raise ReceiverError(
            f"Receiver at {where} is unreachable: {_reason(reason)}.", retry=True
        ) from exc
    if len(raw) > config.max_reply_bytes:
        raise ReceiverError(_too_big(config), retry=False)
    return raw


def _read_lines(response, config: ReceiverConfig, on_line) -> bytes:
    """A chunked body, line by line as its chunks come (blocking)."""
    total = 0
    while line := response.readline(config.max_reply_bytes + 1):
        total += len(line)
        if total > config.max_reply_bytes:
            raise ReceiverError(_too_big(config), retry=False)
        if not line.endswith(b"\n"):
            return line
        on_line(line)
    return b""


# --- Streamed replies (replyStream=true, docs/protocol.md §11) ---------------------


async def receiver_stream(
    config: ReceiverConfig, payload: dict[str, Any]
) -> AsyncIterator[str]:
    """Send one batch document; yield the reply's text as it comes, line by line.

    A receiver that honours `"stream": true` writes several lines (TCP) or a
    chunked body of lines (HTTP), each read like a whole reply (`reply_text`); one
    that does not answers one line, or one body, as always. The whole exchange is
    bounded by RECEIVER_TIMEOUT and RECEIVER_MAX_REPLY_BYTES.
    """
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    lines = _http_lines(config, body) if config.url else _tcp_lines(config, body)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await anext(lines)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise ReceiverError(
                    f"Receiver at {config.address} did not finish its reply within "
                    f"{config.timeout:g} seconds.",
                    retry=True,
                ) from exc
            if text := reply_text(raw):
                yield text
    finally:
        await lines.aclose()


async def _tcp_lines(config: ReceiverConfig, body: bytes) -> AsyncGenerator[bytes]:
    async with _tcp_request(config, body) as reader:
        total = 0
        while True:
            # readuntil, not readline: a line longer than the reader's limit is
            # refused as too big rather than split.
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
            except asyncio.LimitOverrunError as exc:
                raise ReceiverError(_too_big(config), retry=False) from exc
            total += len(line)
            if total > config.max_reply_bytes:
                raise ReceiverError(_too_big(config), retry=False)
            if not line:
                return
            yield line


async def _http_lines(config: ReceiverConfig, body: bytes) -> AsyncGenerator[bytes]:
    """The POST on the receiver-http pool; its lines handed over as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def on_line(line: bytes) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, line)

    posting = asyncio.ensure_future(
        run_blocking(HTTP_POOL, _http_post, config, body, on_line)
    )
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            await asyncio.wait({getting, posting}, return_when=asyncio.FIRST_COMPLETED)
            if getting.done():
                yield getting.result()
                continue
            getting.cancel()
            rest = posting.result()  # its ReceiverError, if it failed
            while not queue.empty():
                yield queue.get_nowait()
            if rest:
                yield rest
            return
    finally:
        # A thread cannot be cancelled: it ends at its socket's timeout at worst.
        posting.cancel()


def _reason(reason: object) -> str:
    """An OSError's words without the address it may quote (a URL's credentials)."""
    if isinstance(reason, OSError):
        return reason.strerror or reason.__class__.__name__
    return str(reason) if isinstance(reason, str) else reason.__class__.__name__
