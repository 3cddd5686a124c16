"""`shutdown_app` with the project's daphne patches for close codes and shutdown."""

import django

django.setup()

from tests.voiceproject.shutdown_app import application, drain, stopped  # noqa: E402
from voiceproject.server import closes as daphne_closes  # noqa: E402
from voiceproject.server import shutdown as daphne_shutdown  # noqa: E402

daphne_closes.install()
daphne_shutdown.install(drain=drain, stopped=stopped)

__all__ = ["application"]
