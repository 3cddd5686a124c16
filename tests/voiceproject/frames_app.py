"""A bare ASGI app under plain daphne: reports each WebSocket message it receives;
the text `close:CODE` makes it close with that code and the reason "bye".

With `frames_app_limited` (the same app with `flow_control` installed) it shows what
the patch changes against daphne's original behaviour.
"""

import json


async def application(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        if "too_big" in message:
            report = {"too_big": message["too_big"]}
            await send({"type": "websocket.send", "text": json.dumps(report)})
            await send({"type": "websocket.close", "code": 1009})
            return
        if (text := message.get("text") or "").startswith("close:"):
            code = int(text.removeprefix("close:"))
            await send({"type": "websocket.close", "code": code, "reason": "bye"})
            return
        size = len(message.get("bytes") or message.get("text") or "")
        await send({"type": "websocket.send", "text": json.dumps({"size": size})})
