"""`frames_app` with the project's daphne patches for close codes and frame limits."""

import django

django.setup()

from tests.voiceproject.frames_app import application  # noqa: E402
from voiceproject.server import closes as daphne_closes  # noqa: E402
from voiceproject.server import flow_control as daphne_limits  # noqa: E402

daphne_closes.install()
daphne_limits.install()

__all__ = ["application"]
