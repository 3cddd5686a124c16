"""Frame size and flow control for daphne (docs/protocol.md §7): the public API.

Three things daphne does not do for an audio relay:

- Frames over MAX_FRAME_BYTES. autobahn learns a frame's length from its header and
  daphne's own limit (1 MiB) then drops the TCP connection: the client sees 1006 and
  the consumer never hears of it. Here the limit is MAX_FRAME_BYTES, the payload of
  an oversized frame is discarded as it arrives (never buffered), and the consumer
  gets `{"type": "websocket.receive", "bytes": b"", "too_big": <length>}` so that it
  sends `{"error"}`, closes 1009 and records why.
- Flow control. daphne puts every frame in an unbounded queue for the application.
  Here a websocket's queue counts the bytes it holds and pauses reading the socket
  above a high-water mark, resuming below a low one. A consumer that stops calling
  `receive()` while its engine's backlog is full therefore slows the client down
  (TCP does the rest) instead of letting its audio pile up in memory. The scope
  says so with `scope["extensions"][FLOW_CONTROL]`, which also carries an event set
  when the client disconnects (a consumer waiting for room can stop waiting).

- Bounding what waits to be sent. A client that does not read while the server sends
  (autobahn answers every ping) is dropped once more than MAX_OUTBOUND_BYTES wait in
  Twisted's buffer for it, and its consumer told why (`outbound_overflow`).

The patches themselves live with the class they change: `websocket_protocol`
(`install_frame_limits`, `install_outbound_limit`) and `application_queue`
(`FlowQueue`, daphne's `Server.create_application`). Written against daphne 4.2,
autobahn 26.11 and Twisted 26.10; `install()` refuses other versions.
"""

from voiceproject.server import application_queue, websocket_protocol
from voiceproject.server.application_queue import (
    FLOW_CONTROL,
    HIGH_WATER_BYTES,
    FlowQueue,
    high_water_bytes,
)
from voiceproject.server.versions import require_versions, tested

TESTED_VERSIONS = tested("daphne", "autobahn")

__all__ = [
    "FLOW_CONTROL",
    "HIGH_WATER_BYTES",
    "TESTED_VERSIONS",
    "FlowQueue",
    "high_water_bytes",
    "install",
]


def install() -> None:
    """The three patches once (no-op without daphne); refuses untested versions."""
    try:
        import daphne  # noqa: F401
    except ImportError:  # pragma: no cover - another ASGI server
        return
    require_versions(__name__, TESTED_VERSIONS)
    application_queue.install()
    websocket_protocol.install_frame_limits()
    websocket_protocol.install_outbound_limit()
