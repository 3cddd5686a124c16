"""WebSocket URL routes: `/` as seed 004 shows, `/ws/transcribe/` as an alias.

Any other path is refused before authentication: no token lookup, no charge to the
failed-attempt limit (`UnknownPathConsumer`).
"""

from django.urls import path, re_path

from transcription.streaming.consumer import TranscriptionConsumer, UnknownPathConsumer


def websocket_routes(authenticate) -> list:
    """The routes, the transcription consumer behind `authenticate` (the token
    middleware stack); any other path last, without it."""
    consumer = authenticate(TranscriptionConsumer.as_asgi())
    return [
        path("", consumer),
        path("ws/transcribe/", consumer),
        re_path(r"", UnknownPathConsumer.as_asgi()),
    ]
