"""Per-frame shortcuts for daphne, autobahn and Channels (docs/performance.md §3).

An audio stream is a WebSocket frame in and a message out every 32 ms, so work done
per frame is multiplied by ~31 a second per session. Costs that do nothing for us are
skipped, each only in the case where skipping it changes nothing:

- autobahn's debug lines for every read and write, its dozen calls per frame parsed
  and written, daphne's `websocket.send` through them, and Twisted's buffered write
  (`write_now`): `websocket_protocol.install_fast_path()`;
- Channels' session middleware on messages it does not act on: `session_middleware`.

They change no behaviour, so on library versions they were not written for the
unpatched paths stay, with a warning, instead of a refusal to start.
"""

import logging

from voiceproject.server import session_middleware, websocket_protocol
from voiceproject.server.versions import tested, versions_untested

logger = logging.getLogger(__name__)
TESTED_VERSIONS = tested("daphne", "autobahn", "channels", "twisted")


def install() -> None:
    """Install every shortcut once, or none on untested versions (with a warning)."""
    if untested := versions_untested(TESTED_VERSIONS):
        logger.warning("relay speedups off (untested %s)", ", ".join(untested))
        return
    session_middleware.install()
    websocket_protocol.install_fast_path()
