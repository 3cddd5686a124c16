"""The amazon-transcribe SDK's private parts this project replaces, in one place.

The SDK (0.6) has no hooks for its HTTP session or its request body, so the engine
swaps them in on each client: an HTTP/2 session that one stream can close (and that
gives up connecting after CONNECT_TIMEOUT_MS), and a body that does not spin a CRT
thread. That reaches into `_credential_resolver`, `_eventloop`, `_session_manager`,
`_serializer` and the session manager's `_socket_options` and `_connections`: written
for exactly the SDK version pyproject.toml pins, and refused with any other.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from amazon_transcribe.auth import CredentialResolver
from amazon_transcribe.client import TranscribeStreamingClient
from amazon_transcribe.httpsession import AwsCrtHttpSessionManager
from amazon_transcribe.serialize import TranscribeStreamingSerializer
from amazon_transcribe.structures import BufferableByteStream

from voiceproject.server.versions import require_versions, tested

require_versions(__name__, tested("amazon-transcribe"))

CONNECT_TIMEOUT_MS = 5000
NAP_SECONDS = 0.004  # an idle CRT thread's pause between polls of empty bodies
BUSY_SECONDS = 0.001  # ... once it has sent nothing for this long


def session_client(
    *,
    region: str,
    endpoint_resolver: Any,
    credentials: CredentialResolver | None,
) -> tuple[TranscribeStreamingClient, SessionHttp, CredentialResolver]:
    """A client with this module's HTTP session and serializer swapped in, that
    session, and the credential resolver to pass to the next client (the default
    chain caches what it resolves: one for the whole process)."""
    client = TranscribeStreamingClient(
        region=region,
        endpoint_resolver=endpoint_resolver,
        credential_resolver=credentials,
    )
    http = SessionHttp(client._eventloop)
    client._session_manager = http
    client._serializer = _Serializer()
    return client, http, client._credential_resolver


class _CalmBody(BufferableByteStream):
    """The SDK's request body (audio events), without the busy wait.

    awscrt 0.26 (the SDK pins it) polls a streaming HTTP/2 body without pause while it
    is empty, which keeps a CRT thread at 100 % of a core for as long as any stream is
    open (awslabs/amazon-transcribe-streaming-sdk#25, #84, #109). When a CRT thread has
    sent nothing for a moment, an empty poll naps a few milliseconds instead; a thread
    that is moving audio never naps. Audio waits at most one nap.
    """

    _threads = threading.local()

    def read(self, size=-1):
        calm = self._threads
        try:
            data = super().read(size)
        except BlockingIOError:
            if time.monotonic() - getattr(calm, "last_data", 0.0) > BUSY_SECONDS:
                time.sleep(NAP_SECONDS)
            raise
        calm.last_data = time.monotonic()
        return data

    def read1(self, size=-1):
        return self.read(size)


class _Serializer(TranscribeStreamingSerializer):
    def serialize_start_stream_transcription_request(self, endpoint, request_shape):
        request = super().serialize_start_stream_transcription_request(
            endpoint=endpoint, request_shape=request_shape
        )
        request.body = _CalmBody()
        return request


class SessionHttp(AwsCrtHttpSessionManager):
    """The SDK's HTTP/2 session manager, keeping what it takes to end the session."""

    def __init__(self, bootstrap):
        super().__init__(bootstrap)
        self._socket_options.connect_timeout_ms = CONNECT_TIMEOUT_MS
        self.responses: list = []

    async def make_request(self, *args, **kwargs):
        response = await super().make_request(*args, **kwargs)
        self.responses.append(response)
        return response

    def close(self) -> None:
        """Close the connection: the CRT completes its streams, the reader ends."""
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    async def check_completed(self) -> None:
        """Raise the CRT's error if the HTTP/2 stream ended abnormally."""
        for response in self.responses:
            await response.done
