"""Per-frame shortcuts for daphne, autobahn and Channels (SPEC §9, README Performance).

An audio stream is a WebSocket frame in and a message out every 32 ms, so work done
per frame is multiplied by ~31 a second per session. Two such costs do nothing for
us and are skipped here, each only in the case where skipping it changes nothing:

- autobahn formats a debug line for every read and every write (`hltype`/`hlval`,
  which style text with click) before its logger drops it. When its debug logging is
  off, `dataReceived` and the plain path of `sendData` run without it.
- Channels' session middleware looks into the (lazy) session on every message it
  passes, though it only acts on `http.response.start`; other messages go straight on.
- Twisted's TCP write buffers every message and has the event loop watch the socket
  for one write (`write_now`): with nothing buffered, the bytes go out at once.
"""

import logging

from channels.sessions import InstanceSessionWrapper
from twisted.internet import tcp

from voiceproject.patching import tested, versions_untested

logger = logging.getLogger(__name__)
TESTED_VERSIONS = tested("daphne", "autobahn", "channels", "twisted")


def _debug_enabled(log) -> bool:
    # txaio swaps a disabled level's method for a function named _no_op.
    return getattr(log.debug, "__name__", "") != "_no_op"


def install_session_fast_path() -> None:
    if getattr(InstanceSessionWrapper, "_fast_path", False):
        return
    original = InstanceSessionWrapper.send

    async def send(self, message):
        if message["type"] not in self.save_message_types:
            return await self.real_send(message)
        return await original(self, message)

    InstanceSessionWrapper.send = send
    InstanceSessionWrapper._fast_path = True


def write_now(transport, data: bytes) -> None:
    """`transport.write(data)`, sent on the socket at once when nothing waits before it.

    Twisted's TCP write only buffers, then registers the socket with the event loop
    for one write and unregisters it after: two system calls and their Python around
    every message. With nothing buffered there is no order to keep, so the bytes go
    out now; what the socket does not take (its buffer is full) goes through Twisted's
    buffer as usual. Other transports (TLS, tests) write as they always do.
    """
    if (
        type(transport) is not tcp.Server
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        sent = 0  # would block, or the connection is gone: Twisted finds out
    if sent < len(data):
        transport.write(data[sent:])


def install_autobahn_fast_path() -> None:
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebSocketProtocol, "_fast_path", False):
        return
    original_received = WebSocketProtocol.dataReceived
    original_send = WebSocketProtocol.sendData
    STATE_OPEN = WebSocketProtocol.STATE_OPEN

    def dataReceived(self, data):
        if _debug_enabled(self.log):
            return original_received(self, data)
        return self._dataReceived(data)

    def sendData(self, data, sync=False, chopsize=None):
        # autobahn's own plain path (no chopping, queueing or octet logging), unlogged.
        if (
            chopsize
            or sync
            or self.send_queue
            or self.state != STATE_OPEN
            or self.logOctets
            or _debug_enabled(self.log)
        ):
            return original_send(self, data, sync, chopsize)
        write_now(self.transport, data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)
        return None

    WebSocketProtocol.dataReceived = dataReceived
    WebSocketProtocol.sendData = sendData
    WebSocketProtocol._fast_path = True


def install() -> None:
    """Install every shortcut once (each is a no-op when its library is missing).

    They change no behaviour, so on library versions they were not written for the
    unpatched paths stay, with a warning, instead of a refusal to start.
    """
    if untested := versions_untested(TESTED_VERSIONS):
        logger.warning("relay speedups off (untested %s)", ", ".join(untested))
        return
    install_session_fast_path()
    install_autobahn_fast_path()
