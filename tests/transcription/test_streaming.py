"""StreamingWebsocketConsumer keeps AsyncWebsocketConsumer's semantics."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from transcription.streaming.dispatch import StreamingWebsocketConsumer

WAIT = 5  # a bound on each wait, never an assertion about speed

# Channels closes stale database connections around connect and disconnect.
pytestmark = pytest.mark.django_db


class Probe(StreamingWebsocketConsumer):
    """Echoes frames, relays group messages, and records what happened to it."""

    groups = ["probe"]
    instances: list["Probe"]

    async def connect(self):
        type(self).instances.append(self)
        self.events = []
        self.busy = False
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "hold":
            # Stays inside a handler until released: others must wait for it.
            self.busy = True
            self.events.append("hold")
            self.holding.set()
            await self.release.wait()
            self.busy = False
            await self.send(text_data="held")
        elif bytes_data is not None:
            await self.send(bytes_data=bytes_data[::-1])
        else:
            await self.send(text_data=text_data.upper())

    async def relay_note(self, event):
        self.events.append(("note", self.busy))
        await self.send(text_data=f"note:{event['text']}")

    async def relay_fail(self, event):
        raise ValueError(event["text"])

    async def relay_stop(self, event):
        raise StopConsumer

    async def disconnect(self, code):
        self.events.append(("disconnect", code))


@pytest.fixture
def probe():
    Probe.instances = []
    return Probe


@pytest.fixture
async def communicator(probe):
    communicator = WebsocketCommunicator(probe.as_asgi(), "/")
    connected, _ = await communicator.connect(WAIT)
    assert connected
    yield communicator
    await communicator.disconnect()


def dispatch_tasks() -> list[asyncio.Task]:
    """The running channel-layer dispatch tasks (each test first sees its own, so an
    empty list later means they stopped, not that none was ever found)."""
    assert hasattr(StreamingWebsocketConsumer, "_dispatch_layer")
    return [
        task
        for task in asyncio.all_tasks()
        if "_dispatch_layer" in repr(task.get_coro()) and not task.done()
    ]


async def connected(probe) -> WebsocketCommunicator:
    """A connected Probe whose layer dispatch task runs."""
    communicator = WebsocketCommunicator(probe.as_asgi(), "/")
    assert (await communicator.connect(WAIT))[0]
    assert len(dispatch_tasks()) == 1
    return communicator


async def test_is_a_channels_websocket_consumer():
    from channels.generic.websocket import AsyncWebsocketConsumer

    assert issubclass(StreamingWebsocketConsumer, AsyncWebsocketConsumer)


async def test_receive_and_send_text_and_bytes(communicator):
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from(WAIT) == "HELLO"
    await communicator.send_to(bytes_data=b"\x01\x02\x03")
    assert await communicator.receive_from(WAIT) == b"\x03\x02\x01"


async def test_frames_answered_in_order(communicator):
    for n in range(50):
        await communicator.send_to(text_data=f"f{n}")
    replies = [await communicator.receive_from(WAIT) for _ in range(50)]
    assert replies == [f"F{n}" for n in range(50)]


async def test_group_send_reaches_the_client(communicator, probe):
    layer = get_channel_layer()
    await layer.group_send("probe", {"type": "relay.note", "text": "hi"})
    assert await communicator.receive_from(WAIT) == "note:hi"


async def test_channel_send_to_the_consumer_channel(communicator, probe):
    consumer = probe.instances[0]
    layer = get_channel_layer()
    await layer.send(consumer.channel_name, {"type": "relay.note", "text": "direct"})
    assert await communicator.receive_from(WAIT) == "note:direct"


async def test_handlers_run_one_at_a_time(probe, monkeypatch):
    layer = get_channel_layer()
    taken = asyncio.Event()
    receive = layer.receive

    async def receive_and_tell(channel):
        message = await receive(channel)
        taken.set()
        return message

    monkeypatch.setattr(layer, "receive", receive_and_tell)  # before the consumer
    communicator = await connected(probe)
    consumer = probe.instances[0]
    await communicator.send_to(text_data="hold")
    await asyncio.wait_for(consumer.holding.wait(), WAIT)
    await layer.group_send("probe", {"type": "relay.note", "text": "x"})
    await asyncio.wait_for(taken.wait(), WAIT)  # the dispatch task has the message
    # Any database-thread hop on its way to the handler is done after this one.
    await sync_to_async(lambda: None)()
    for _ in range(20):
        await asyncio.sleep(0)
    assert ("note", True) not in consumer.events
    consumer.release.set()
    assert await communicator.receive_from(WAIT) == "held"
    assert await communicator.receive_from(WAIT) == "note:x"
    assert ("note", False) in consumer.events
    await communicator.disconnect()


async def test_disconnect_runs_handler_and_stops_tasks(probe):
    communicator = await connected(probe)
    await communicator.disconnect(code=4001)
    await communicator.wait(WAIT)
    assert probe.instances[0].events == [("disconnect", 4001)]
    assert dispatch_tasks() == []
    # The group is left, as AsyncWebsocketConsumer does.
    layer = get_channel_layer()
    assert probe.instances[0].channel_name not in layer.groups.get("probe", {})


async def ended(communicator) -> asyncio.Future:
    """The consumer's future once it ends by itself (wait() would cancel it)."""
    await asyncio.wait([communicator.future], timeout=WAIT)
    assert communicator.future.done()
    return communicator.future


async def test_layer_handler_error_ends_the_consumer(probe):
    communicator = await connected(probe)
    await get_channel_layer().group_send("probe", {"type": "relay.fail", "text": "x"})
    future = await ended(communicator)
    assert isinstance(future.exception(), ValueError)
    assert dispatch_tasks() == []


async def test_layer_handler_stop_consumer_ends_it_cleanly(probe):
    communicator = await connected(probe)
    await get_channel_layer().group_send("probe", {"type": "relay.stop"})
    future = await ended(communicator)
    assert not future.cancelled()
    assert future.exception() is None
    assert dispatch_tasks() == []


async def test_client_handler_error_ends_the_consumer(probe):
    communicator = await connected(probe)
    await communicator.send_input(
        {"type": "websocket.receive"}
    )  # neither text nor bytes
    with pytest.raises(KeyError):
        await communicator.wait(WAIT)
    assert dispatch_tasks() == []


async def test_cancelled_from_outside_stops_tasks(probe):
    communicator = await connected(probe)
    communicator.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert dispatch_tasks() == []  # stopped before the consumer's task ended


async def test_works_without_a_channel_layer(settings):
    settings.CHANNEL_LAYERS = {}

    class Plain(StreamingWebsocketConsumer):
        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data[::-1])

    communicator = WebsocketCommunicator(Plain.as_asgi(), "/")
    connected, _ = await communicator.connect(WAIT)
    assert connected
    assert dispatch_tasks() == []
    await communicator.send_to(text_data="abc")
    assert await communicator.receive_from(WAIT) == "cba"
    await communicator.disconnect()
