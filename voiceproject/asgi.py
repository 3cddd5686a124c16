"""ASGI entry point: HTTP goes to Django, WebSockets to the transcription consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproject.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.middleware import ApiTokenAuthMiddlewareStack  # noqa: E402
from transcription import shutdown  # noqa: E402
from transcription.routing import websocket_urlpatterns  # noqa: E402
from transcription.startup import StartOnFirstConnection  # noqa: E402
from voiceproject import (  # noqa: E402
    daphne_access_log,
    daphne_closes,
    daphne_limits,
    daphne_shutdown,
    relay_speedups,
)

daphne_closes.install()
daphne_access_log.install()
daphne_limits.install()
daphne_shutdown.install(drain=shutdown.drain, stopped=shutdown.stop_process)
relay_speedups.install()

application = StartOnFirstConnection(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": ApiTokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        }
    )
)
