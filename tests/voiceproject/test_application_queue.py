"""application_queue.FlowQueue: daphne's application queue, with flow control."""

import asyncio

import pytest
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol

from voiceproject.server.application_queue import FlowQueue, websocket_scheme


class Transport:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")


def frame(size: int) -> dict:
    return {"type": "websocket.receive", "bytes": b"x" * size}


async def test_messages_come_out_in_order_and_a_getter_waits_for_one():
    queue = FlowQueue(Transport(), high_water=100)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put_nowait({"type": "websocket.connect"})
    queue.put_nowait(frame(3))
    assert await waiting == {"type": "websocket.connect"}
    assert await queue.get() == frame(3)
    assert queue.held == 0


async def test_reading_pauses_above_the_high_water_and_resumes_below_the_low():
    transport = Transport()
    queue = FlowQueue(transport, high_water=100)  # low water: 25
    for _ in range(3):
        queue.put_nowait(frame(40))
    assert transport.calls == ["pause"]
    assert queue.held == 120
    await queue.get()
    await queue.get()
    assert transport.calls == ["pause"]  # 40 held: above the low water
    await queue.get()
    assert transport.calls == ["pause", "resume"]
    assert queue.held == 0


async def test_a_disconnect_sets_the_event_the_scope_carries():
    queue = FlowQueue(Transport(), high_water=100)
    queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert queue.disconnected.is_set()


async def test_a_woken_getter_cancelled_hands_the_message_to_the_next():
    queue = FlowQueue(Transport(), high_water=100)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(frame(1))  # wakes the first ...
    first.cancel()  # ... which is cancelled before it runs
    assert await second == frame(1)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert queue.held == 0


def test_the_scheme_is_wss_over_twisteds_tls_and_ws_otherwise():
    assert websocket_scheme(TLSMemoryBIOProtocol(None, Protocol())) == "wss"
    assert websocket_scheme(Transport()) == "ws"
