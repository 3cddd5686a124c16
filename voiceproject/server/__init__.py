"""Patches of daphne, autobahn, Channels and Twisted, installed in one explicit order.

One module per class we change, each with its own `install()` (the test apps in
tests/voiceproject install single patches), every one version-guarded (`versions`):
written for the versions pyproject.toml pins, refused or left off for others.

| class | attributes we replace | module |
| --- | --- | --- |
| daphne `WebSocketProtocol` | `handle_reply`, `onConnect`, | `websocket_protocol` |
|  | `_max_message_size_exceeded`, `processData`, |  |
|  | `sendMessage`, `dataReceived`, `sendData` |  |
| daphne `Server` | `create_application` | `application_queue` |
| daphne `Server` | `kill_all_applications` | `shutdown` |
| daphne `AccessLogGenerator` | `__call__` | `access_log` |
| Channels `InstanceSessionWrapper` | `send` | `session_middleware` |

Two modules group patches of several classes into one feature: `flow_control` (frame
limits and the application queue; its public API: `FLOW_CONTROL`, `FlowQueue`) and
`relay_speedups` (the per-frame shortcuts and their version policy).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Every attribute install() replaces, by the class that owns it (PATCHED is checked
# against the classes by tests/voiceproject/test_server_install.py).
PATCHED = {
    "daphne.ws_protocol.WebSocketProtocol": (
        "handle_reply",
        "onConnect",
        "_max_message_size_exceeded",
        "processData",
        "sendMessage",
        "dataReceived",
        "sendData",
    ),
    "daphne.server.Server": ("create_application", "kill_all_applications"),
    "daphne.access.AccessLogGenerator": ("__call__",),
    "channels.sessions.InstanceSessionWrapper": ("send",),
}

_installed = False


def install(
    *, drain: Callable[[float], Awaitable[None]], stopped: Callable[[], Awaitable[None]]
) -> None:
    """Apply every server patch, once (a second call does nothing), in this order:

    1. close codes (`websocket_protocol.install_close_codes`),
    2. tokens out of the access log (`access_log.install`),
    3. frame limits and flow control (`flow_control.install`),
    4. graceful stop at SIGTERM/SIGINT (`shutdown.install(drain=, stopped=)`),
    5. the per-frame shortcuts (`relay_speedups.install`).

    The patches that change what the server does come first, and each refuses an
    untested library version, so the server starts with all of them or not at all;
    the shortcuts come last, as they change nothing and step aside (with a warning)
    on untested versions. No step depends on one before it: they replace different
    attributes, and `handle_reply`, which two of them change, is composed in
    `websocket_protocol` whatever the order.
    """
    global _installed
    if _installed:
        return
    from voiceproject.server import (
        access_log,
        flow_control,
        relay_speedups,
        shutdown,
        websocket_protocol,
    )

    websocket_protocol.install_close_codes()
    access_log.install()
    flow_control.install()
    shutdown.install(drain=drain, stopped=stopped)
    relay_speedups.install()
    _installed = True
