"""The plain-Channels baseline for bench_relay: one AsyncWebsocketConsumer under daphne.

It answers each binary frame as the echo engine does (`{"partialTranscript": "N
bytes"}`, N counted so far), with the in-memory channel layer that our server also
uses by default, and nothing else: no auth, no database, no engine.
"""

import json

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        DATABASES={},
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer


class EchoConsumer(AsyncWebsocketConsumer):
    received = 0

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            self.received += len(bytes_data)
            await self.send(
                text_data=json.dumps({"partialTranscript": f"{self.received} bytes"})
            )


application = EchoConsumer.as_asgi()
