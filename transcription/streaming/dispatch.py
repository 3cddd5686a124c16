"""A Channels WebSocket consumer whose dispatch loop is cheap enough for audio streams.

A stream sends a frame every 32 ms, so a relay serving hundreds of them dispatches
thousands of messages a second. Two costs of Channels' own loop dominate there
(docs/performance.md §3.1): `channels.utils.await_many_dispatch` creates a task and
runs an `asyncio.wait` for every message, and `AsyncConsumer.dispatch` first hops to
the database thread (`aclose_old_connections`) before every handler.
"""

import asyncio
import contextlib
import functools

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from transcription.channel_layer import LAYER_ERRORS, layer_health
from voiceproject.server.versions import require_versions, tested

# The dispatch below reimplements Channels' own loop (channels.consumer.AsyncConsumer
# and channels.utils.await_many_dispatch): written for these versions.
require_versions(__name__, tested("channels"))

RECEIVE = "websocket.receive"


class StreamingWebsocketConsumer(AsyncWebsocketConsumer):
    """An AsyncWebsocketConsumer with the same handlers, dispatched more cheaply.

    The client's messages are read by the consumer's own task and, with a channel
    layer, the layer's messages (group_send and the like) by a second task. As in
    Channels, handlers run one at a time, each message source in order, and an
    exception or StopConsumer from any handler ends the consumer. Unlike Channels,
    a layer that fails (Redis away) does not: `layer_failed()` is told, and the
    receive is tried again once the layer answers.

    The one difference: `websocket.receive` (each frame) is dispatched without
    `aclose_old_connections`, so a subclass's receive() must reach the ORM through
    `database_sync_to_async`, which closes stale connections around every call
    itself, and not through the async ORM. Every other message, connect and
    disconnect included, is dispatched exactly as Channels does it.
    """

    _layer_exit: BaseException | None = None

    async def __call__(self, scope, receive, send):
        consumer_task = asyncio.current_task()
        if consumer_task is None:
            raise RuntimeError("a consumer runs in an asyncio task")
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(
                self.channel_layer.receive, self.channel_name
            )
        self.base_send = send
        self._dispatching = asyncio.Lock()
        layer_task = None
        if self.channel_layer is not None:
            layer_task = asyncio.create_task(self._dispatch_layer(consumer_task))
        try:
            while True:
                message = await receive()
                async with self._dispatching:
                    await self.dispatch(message)
                del message  # an idle session keeps no frame
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if self._layer_exit is None:
                raise  # cancelled from outside, e.g. by the server
            consumer_task.uncancel()
            if not isinstance(self._layer_exit, StopConsumer):
                raise self._layer_exit from None
        finally:
            if layer_task is not None:
                layer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await layer_task

    async def _dispatch_layer(self, consumer_task: asyncio.Task) -> None:
        """Channel-layer messages, one at a time with the client's."""
        try:
            while True:
                try:
                    message = await self.channel_receive()
                except LAYER_ERRORS as exc:
                    layer_health.failed("receive", exc)
                    self.layer_failed(exc)
                    await layer_health.until_back()
                    continue
                async with self._dispatching:
                    await self.dispatch_layer(message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer's task, which ends
            self._layer_exit = exc
            consumer_task.cancel()

    def layer_failed(self, exc: BaseException) -> None:
        """The channel layer failed to receive (counted already; a subclass
        rejoins its groups)."""

    async def dispatch_layer(self, message: dict) -> None:
        """A channel-layer message (a subclass may route some itself)."""
        await self.dispatch(message)

    async def dispatch(self, message):
        if message.get("type") == RECEIVE:
            # The per-frame path: no thread hop (see the class docstring).
            await self.websocket_receive(message)
            return
        await super().dispatch(message)
