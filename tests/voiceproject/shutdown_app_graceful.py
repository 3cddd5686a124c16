"""`shutdown_app` with the project's daphne patches for close codes and shutdown."""

import django

django.setup()

from tests.voiceproject.shutdown_app import application, drain, stopped  # noqa: E402
from voiceproject.server import shutdown, websocket_protocol  # noqa: E402

websocket_protocol.install_close_codes()
shutdown.install(drain=drain, stopped=stopped)

__all__ = ["application"]
