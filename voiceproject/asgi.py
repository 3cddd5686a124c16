"""ASGI entry point: HTTP goes to Django, WebSockets to the transcription consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproject.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.middleware import ApiTokenAuthMiddlewareStack  # noqa: E402
from transcription.runtime import shutdown  # noqa: E402
from transcription.runtime.startup import StartOnFirstConnection  # noqa: E402
from transcription.streaming.routing import websocket_routes  # noqa: E402
from transcription.web.upload_limit import UploadLimit  # noqa: E402
from voiceproject import server  # noqa: E402

server.install(drain=shutdown.drain, stopped=shutdown.stop_process)

application = StartOnFirstConnection(
    ProtocolTypeRouter(
        {
            "http": UploadLimit(django_asgi_app),
            "websocket": URLRouter(websocket_routes(ApiTokenAuthMiddlewareStack)),
        }
    )
)
