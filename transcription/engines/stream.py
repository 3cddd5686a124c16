"""What streaming engines share: a bounded audio backlog, and a stream built on one.

A `BacklogStream` takes audio into an `AudioBacklog` that a task of its own drains
(to a decoding process, to AWS, ...) and gives out the events, the failure and the
end that task puts in its queue.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import ClassVar

from transcription.engines.types import (
    EngineError,
    StreamEvent,
    StreamParams,
    audio_backlog_limit,
)


class AudioBacklog:
    """Audio waiting for an engine, bounded: `put()` waits while it is full.

    The waiting is the flow control of docs/protocol.md §7: a consumer blocked in
    `put()` stops reading its socket, so a client streaming faster than the engine
    decodes is slowed down instead of filling the server's memory.
    """

    def __init__(self, limit: int, *, sample_bytes: int = 2) -> None:
        self.limit = limit
        self.sample_bytes = sample_bytes  # take() cuts between whole samples
        self._data = bytearray()
        self._ended = self._closed = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._put = self._taken = 0  # bytes put and taken so far
        self._marks: collections.deque[int] = collections.deque()  # see mark()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def full(self) -> bool:
        return len(self._data) >= self.limit

    @property
    def received(self) -> int:
        """Bytes put so far."""
        return self._put

    @property
    def taken(self) -> int:
        """Bytes taken so far."""
        return self._taken

    @property
    def ended(self) -> bool:
        """end() was called (there may still be audio to take)."""
        return self._ended

    async def put(self, chunk: bytes) -> None:
        """Add audio once there is room (dropped after end() or close())."""
        while self.full and not self._closed:
            self._room.clear()
            await self._room.wait()
        if not (self._ended or self._closed):
            self._data += chunk
            self._put += len(chunk)
            self._readable.set()

    def mark(self) -> None:
        """A point in the audio, here (a Finalize): take() stops at it, and
        `passed_mark()` says when it was reached. Marks at one place are one: a
        client that repeats Finalize costs no decoding call each."""
        if not self._marks or self._marks[-1] != self._put:
            self._marks.append(self._put)
        self._readable.set()

    def passed_mark(self) -> bool:
        """Whether what was taken reached the oldest mark (forgotten once told)."""
        if self._marks and self._marks[0] <= self._taken:
            self._marks.popleft()
            return True
        return False

    def end(self) -> None:
        """No more audio will come."""
        self._ended = True
        self._readable.set()

    def close(self) -> None:
        """Drop what is waiting and release every waiter."""
        self._closed = self._ended = True
        self._data.clear()
        self._room.set()
        self._readable.set()

    async def readable(self) -> None:
        """Wait until there is audio to take or the end was announced."""
        while not (self._data or self._ended or self._marks):
            self._readable.clear()
            await self._readable.wait()

    def take(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the oldest audio (whole samples when cut)."""
        if len(self._data) > max_bytes:
            max_bytes -= max_bytes % self.sample_bytes
        if self._marks:  # exactly to the mark, where the client put it
            max_bytes = min(max_bytes, self._marks[0] - self._taken)
        data = bytes(self._data[:max_bytes])
        del self._data[: len(data)]
        self._taken += len(data)
        if not self.full:
            self._room.set()
        return data


class BacklogStream:
    """The audio side and the events side of a SpeechToText; subclasses drain
    `_backlog`, put events and an EngineError in `_events`, end with `_end_events()`,
    and write `aclose()`."""

    # True: events() puts the end or the failure back, so that a later call ends the
    # same way; False: a failure is raised once, what the queue holds next still comes.
    repeats_its_end: ClassVar[bool] = False

    def __init__(self, params: StreamParams) -> None:
        self._backlog = AudioBacklog(audio_backlog_limit(params))
        self._events: asyncio.Queue[StreamEvent | EngineError | None] = asyncio.Queue()

    async def send_audio(self, chunk: bytes) -> None:
        await self._backlog.put(chunk)

    def backlog_full(self) -> bool:
        return self._backlog.full

    async def end_audio(self) -> None:
        self._backlog.end()

    async def events(self) -> AsyncIterator[StreamEvent]:
        while True:
            item = await self._events.get()
            if item is None or isinstance(item, EngineError):
                if self.repeats_its_end:
                    self._events.put_nowait(item)
                if item is None:
                    return
                raise item
            yield item

    def _end_events(self) -> None:
        """events() ends after what the queue holds now."""
        self._events.put_nowait(None)
