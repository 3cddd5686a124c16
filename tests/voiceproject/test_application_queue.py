"""application_queue.FlowQueue: daphne's application queue, with flow control."""

import asyncio
import gc
import tracemalloc

import pytest
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol

from transcription import metrics
from voiceproject.server.application_queue import (
    MESSAGE_COST,
    FlowQueue,
    message_cost,
    websocket_scheme,
)

COST = MESSAGE_COST


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
    queue = FlowQueue(transport, high_water=2 * COST + 100)  # low water: a quarter
    for _ in range(3):
        queue.put_nowait(frame(40))
    assert transport.calls == ["pause"]
    assert queue.held == 3 * (COST + 40)
    await queue.get()
    await queue.get()
    assert transport.calls == ["pause"]  # one held: above the low water
    await queue.get()
    assert transport.calls == ["pause", "resume"]
    assert queue.held == 0


async def test_paused_connections_are_counted_until_resumed_or_gone():
    paused = metrics.READING_PAUSED._value.get
    start = paused()
    queues = [FlowQueue(Transport(), high_water=COST) for _ in range(2)]
    for queue in queues:
        queue.put_nowait(frame(1))
        queue.put_nowait(frame(1))
    assert paused() == start + 2
    await queues[0].get()
    await queues[0].get()
    assert paused() == start + 1  # resumed
    queues[1].put_nowait({"type": "websocket.disconnect", "code": 1006})
    assert paused() == start  # gone while paused


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


async def test_empty_frames_count_and_pause_reading_too():
    """An empty binary frame is 6 bytes on the wire and a whole message here."""
    transport = Transport()
    queue = FlowQueue(transport, high_water=100 * COST)
    for _ in range(100):
        queue.put_nowait(frame(0))
    assert transport.calls == []
    queue.put_nowait(frame(0))
    assert transport.calls == ["pause"]
    assert queue.held == 101 * COST


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.receive", "bytes": b""},
        {"type": "websocket.receive", "bytes": b"\x01"},
        {"type": "websocket.receive", "bytes": b"\x01\x02" * 50},
        {"type": "websocket.receive", "text": "x"},
        {"type": "websocket.receive", "text": "\N{SNOWMAN}" * 10},
        {"type": "websocket.receive", "text": "\N{GRINNING FACE}"},
    ],
)
def test_a_message_is_charged_at_least_what_it_holds_in_memory(message):
    """Each message as daphne builds it (a new dict, a new payload), queued many
    times: the memory they take, measured, is within what the queue counts."""
    count = 2000
    payload_key = "bytes" if "bytes" in message else "text"
    payload = message[payload_key]
    queue = FlowQueue(Transport(), high_water=1 << 40)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            # A fresh payload object each time, as autobahn makes one per frame.
            fresh = payload[:1] + payload[1:] if payload else payload
            queue.put_nowait({"type": message["type"], payload_key: fresh})
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert queue.held == count * message_cost(message)
    assert used <= queue.held, f"{used / count:.0f} bytes a message"
