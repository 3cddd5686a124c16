"""A session's control messages: KeepAlive, Finalize, CloseStream (protocol §15).

JSON text frames beside END_OF_STREAM, which stays as it is; `protocol.control_type`
parses them. KeepAlive counts as audio for the idle timer; Finalize asks the engine to
end the utterance under way now; CloseStream is END_OF_STREAM that also wants the
session's Metadata before the close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from transcription.streaming import protocol

if TYPE_CHECKING:
    from transcription.streaming.session import StreamSession


async def handle(session: StreamSession, kind: str) -> None:
    """Act on a control message of `kind` (one of `protocol.CONTROL_TYPES`)."""
    if kind == protocol.CLOSE_STREAM:
        session.metadata_wanted = True
        await session.end_audio()
    elif not session.streams_audio:
        return  # flushing already (or not started): the end is under way
    elif kind == protocol.KEEP_ALIVE:
        session.clock.last_audio = asyncio.get_running_loop().time()
    elif kind == protocol.FINALIZE and session.stream is not None:
        await session.stream.finalize()


def metadata(session: StreamSession) -> str:
    """What a CloseStream gets before the close: the session's id, its audio, its
    finals and how long it ran (seconds since it started streaming)."""
    started = session.clock.started
    return protocol.metadata_message(
        session_id=session.session_id,
        audio_seconds=session.record.audio_seconds,
        finals=session.record.finals,
        duration=asyncio.get_running_loop().time() - started if started else 0.0,
    )
