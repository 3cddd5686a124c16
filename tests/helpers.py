"""Waiting in tests: for a close, for a condition, for a database row."""

import asyncio
import json
from collections.abc import Callable


async def receive_until_close(communicator, wait: float = 10):
    """Every JSON message up to the close; returns (messages, close message)."""
    messages = []
    while True:
        output = await communicator.receive_output(wait)
        if output["type"] == "websocket.close":
            return messages, output
        messages.append(json.loads(output["text"]))


async def until(condition: Callable[[], object], seconds: float = 10) -> None:
    """Wait until `condition()` (something of this loop or another thread) holds,
    bounded so that a failure cannot hang."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)


async def eventually(check: Callable[[], object], seconds: float = 10) -> object:
    """Poll a database condition (run in a thread) until it holds, bounded."""
    from asgiref.sync import sync_to_async

    async def poll():
        while not (result := await sync_to_async(check)()):  # noqa: ASYNC110 (the DB)
            await asyncio.sleep(0.02)
        return result

    return await asyncio.wait_for(poll(), seconds)
