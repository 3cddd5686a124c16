"""`frames_app` with the project's daphne patches for close codes and flow control."""

import django

django.setup()

from tests.voiceproject.frames_app import application  # noqa: E402
from voiceproject.server import flow_control, websocket_protocol  # noqa: E402

websocket_protocol.install_close_codes()
flow_control.install()

__all__ = ["application"]
