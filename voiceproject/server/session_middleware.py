"""The one change we make to Channels: its session middleware's `send`.

`channels.sessions.InstanceSessionWrapper.send` looks into the (lazy) session on every
message it passes, though it only acts on the types it saves on
(`http.response.start`); other messages go straight on. Part of `relay_speedups`,
whose `install()` holds the version policy.
"""

from channels.sessions import InstanceSessionWrapper


def install() -> None:
    """The fast path for messages the middleware does not act on, once."""
    if getattr(InstanceSessionWrapper, "_fast_path", False):
        return
    original = InstanceSessionWrapper.send

    async def send(self, message):
        if message["type"] not in self.save_message_types:
            return await self.real_send(message)
        return await original(self, message)

    InstanceSessionWrapper.send = send
    InstanceSessionWrapper._fast_path = True
