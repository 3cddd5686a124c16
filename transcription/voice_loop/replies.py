"""How a worker's reply reaches its session: the group and the event, both sides' names.

The worker pushes `reply_event(...)` to `session_group(id)` through the channel layer;
the consumer of that session, wherever it runs, joined the group and hands events of
type `REPLY_EVENT` to its session.
"""

from __future__ import annotations

import base64
import uuid
from typing import TYPE_CHECKING, Final, NotRequired, TypedDict

if TYPE_CHECKING:
    from transcription.models import ReceiverBatch

REPLY_EVENT: Final = "voice.reply"


class ReplyEvent(TypedDict):
    type: str  # REPLY_EVENT
    batch_id: str
    message: str
    audio: str | None  # base64 MP3
    error: str
    # A piece of a reply streamed by sentence (replyStream): its number, from 0,
    # and whether it is the reply's last.
    seq: NotRequired[int]
    last: NotRequired[bool]
    # Barge-in: the session itself cancelled the reply (never sent by a worker).
    cancelled: NotRequired[bool]


def session_group(session_id: uuid.UUID | str) -> str:
    """The channel-layer group a session's transport joins for its replies."""
    return f"voice.{uuid.UUID(str(session_id)).hex}"


def reply_event(
    *, batch_id: str, message: str, audio: str | None, error: str
) -> ReplyEvent:
    return {
        "type": REPLY_EVENT,
        "batch_id": batch_id,
        "message": message,
        "audio": audio,
        "error": error,
    }


def reply_piece_event(
    *, batch_id: str, message: str, audio: str | None, seq: int, last: bool
) -> ReplyEvent:
    event = reply_event(batch_id=batch_id, message=message, audio=audio, error="")
    event["seq"] = seq
    event["last"] = last
    return event


def stored_reply_event(batch: ReceiverBatch) -> ReplyEvent:
    """The event the worker pushed (or could not push) for a batch with an outcome."""
    failed = batch.status == batch.Status.FAILED
    audio = bytes(batch.reply_audio) if batch.reply_audio and not failed else None
    return reply_event(
        batch_id=str(batch.batch_id),
        message="" if failed else batch.reply_text,
        audio=base64.b64encode(audio).decode() if audio else None,
        error=batch.last_error if failed else batch.tts_error,
    )
