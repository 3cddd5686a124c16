"""A bare ASGI app under plain daphne: a WebSocket that says goodbye when drained.

With `shutdown_app_graceful` (the same app with `server.shutdown` installed) it shows
what the patch changes against daphne's original behaviour at SIGTERM and SIGINT.
"""

import json

_open: set = set()


async def application(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    _open.add(send)
    try:
        await send({"type": "websocket.send", "text": json.dumps({"ready": True})})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        _open.discard(send)


async def drain(seconds: float) -> None:
    for send in list(_open):
        await send({"type": "websocket.send", "text": json.dumps({"drained": seconds})})
        await send({"type": "websocket.close", "code": 1001})


async def stopped() -> None:
    print("application stopped", flush=True)
