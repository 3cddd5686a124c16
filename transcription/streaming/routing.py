"""WebSocket URL routes: `/` as seed 004 shows, `/ws/transcribe/` as an alias."""

from django.urls import path

from transcription.streaming.consumer import TranscriptionConsumer

websocket_urlpatterns = [
    path("", TranscriptionConsumer.as_asgi()),
    path("ws/transcribe/", TranscriptionConsumer.as_asgi()),
]
