"""A resume (`?resume=<id>&after=<seq>`): which session, whose, and where it lives.

On this server a parked session is given the new socket (`Parking.resume`).
On another one, its record says which process served it: a live one is asked over
the channel layer to hand it over (its parked session stops without recording an
end); a dead one (killed: not running on this host, or its heartbeat stopped), or
one that shut down (it released the session when it closed it 1001), is not asked.
Either way this process takes over the record: the stored messages after the
client's seq (finals and replies carry it), a fresh engine stream, the same open
batch. docs/protocol.md, "Resume".
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from transcription import metrics, selectors, server_process, services
from transcription.channel_layer import LAYER_ERRORS
from transcription.db import DATABASE_AWAY, db_call
from transcription.engines import StreamParams, TranscriptEvent, get_engine
from transcription.models import HEARTBEAT_SECONDS, AudioSession, ReceiverBatch
from transcription.runtime import shutdown
from transcription.selectors.sessions import StoredSession
from transcription.streaming import protocol
from transcription.streaming.admission import Client
from transcription.streaming.parking import (
    HAND_OVER,
    HANDED_OVER,
    resumable_session,
    resume_group,
)
from transcription.streaming.protocol import Close, ProtocolError, ResumeRequest
from transcription.streaming.session import StreamSession, Transport

logger = logging.getLogger(__name__)

# How long a live server has to hand a session over.
HAND_OVER_SECONDS = 3.0


def asks_resume(query_string: bytes) -> bool:
    return b"resume=" in query_string


async def resume_session(
    client: Client, query_string: bytes, transport: Transport
) -> StreamSession | None:
    """The session the client resumes over `transport`, or None: refused (one
    {"error"} and its close sent)."""
    if (refusal := client.auth_refusal()) is not None:
        await _refuse(transport, refusal)
        return None
    try:
        request = protocol.resume_request(query_string)
    except ProtocolError as exc:
        await _refuse(transport, protocol.bad_parameters(str(exc)))
        return None
    assert request is not None  # noqa: S101 (asks_resume)
    local = resumable_session(request.session_id)
    if local is not None:
        owner = local.client
        if not (
            local.can_resume and _same_owner(client, _pk(owner.user), _pk(owner.token))
        ):
            await _refuse(transport, protocol.RESUME_REFUSED)
            return None
        await local.parking.resume(transport, request.after)
        metrics.RESUMES.labels(outcome="same_server").inc()
        return local
    if shutdown.draining():  # takes no session over while it stops
        await _refuse(transport, protocol.SHUTTING_DOWN)
        return None
    try:
        return await _from_elsewhere(client, request, transport)
    except DATABASE_AWAY:
        await _refuse(transport, protocol.DATABASE_UNAVAILABLE)
        return None


async def _from_elsewhere(
    client: Client, request: ResumeRequest, transport: Transport
) -> StreamSession | None:
    stored = await db_call(
        selectors.session_stored, session_id=request.session_id, after=request.after
    )
    row = stored.session if stored is not None else None
    if (why := _not_resumable(client, row)) is not None:
        logger.info("session %s: not resumed: %s", request.session_id, why)
        await _refuse(transport, protocol.RESUME_REFUSED)
        return None
    assert row is not None  # noqa: S101 (_not_resumable)
    # A live server that does not answer may hold the session still: try again
    # (unless its heartbeat stopped: then it is gone, wherever it ran).
    handed_over = _running(row) and await _handed_over(request)
    if _running(row) and not handed_over and _silent_for(row) < 2 * HEARTBEAT_SECONDS:
        await _refuse(transport, protocol.RESUME_BUSY)
        return None
    if not await db_call(services.session_take_over, session_id=row.pk):
        await _refuse(transport, protocol.RESUME_REFUSED)
        return None
    # Read again: what the first server stored while it handed over.
    stored = await db_call(
        selectors.session_stored, session_id=request.session_id, after=request.after
    )
    assert stored is not None  # noqa: S101 (taken over: it exists)
    session = StreamSession(client=client, query_string=b"", engine=get_engine())
    if session.slot is None:
        session.release()
        await _refuse(transport, protocol.AT_CAPACITY)
        return None
    params = _params(row)
    session.record.session_id = row.pk
    session.record.finals = stored.finals
    session.record.audio_bytes = row.audio_bytes
    session.parking.seq = stored.last_seq
    logger.info(
        "session %s: taken over from %s pid %s, after seq %d",
        row.pk,
        row.server_host,
        row.server_pid,
        request.after,
    )
    await session.parking.continue_here(
        transport,
        params=params,
        after=request.after,
        replay=_replay(stored, detail=params.detail),
        unsent=stored.unsent,
        audio_seconds=stored.finalized_seconds,
    )
    outcome = "handed_over" if handed_over else "taken_over"
    metrics.RESUMES.labels(outcome=outcome).inc()
    return session


def _not_resumable(client: Client, row: AudioSession | None) -> str | None:
    """Why a session recorded elsewhere cannot be resumed (None: it can)."""
    if row is None:
        return "no such session"
    if not _same_owner(client, row.user_id, row.token_id):
        return "another user's"
    if row.status != AudioSession.Status.ACTIVE:
        return "ended"
    if not row.parameters.get("resumable"):
        return "not resumable"
    if _served_here(row):
        return "ended here (not resumed in time)"
    if (
        row.released_at is not None
        and _since(row.released_at) > settings.RESUME_SECONDS
    ):
        return "released by its server too long ago"
    if _silent_for(row) > settings.RESUME_SECONDS + HEARTBEAT_SECONDS:
        return "its server went silent too long ago"
    return None


async def _handed_over(request: ResumeRequest) -> bool:
    """Ask the session's live server to let go of it; True once it did."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        reply_to = await layer.new_channel()
        await layer.group_send(
            resume_group(request.session_id),
            {"type": HAND_OVER, "reply_to": reply_to},
        )
        async with asyncio.timeout(HAND_OVER_SECONDS):
            while (await layer.receive(reply_to)).get("type") != HANDED_OVER:
                pass
    except LAYER_ERRORS:  # TimeoutError too: no answer in time
        return False
    return True


def _same_owner(client: Client, user_id: int | None, token_id: int | None) -> bool:
    """The same token, or the same user."""
    if token_id is not None and token_id == _pk(client.token):
        return True
    return user_id is not None and user_id == _pk(client.user)


def _pk(thing) -> int | None:
    if thing is None or not getattr(thing, "is_authenticated", True):
        return None
    return thing.pk


def _served_here(row: AudioSession) -> bool:
    return (
        row.server_host == server_process.HOST and row.server_pid == server_process.PID
    )


def _running(row: AudioSession) -> bool:
    """Whether the process that served it may still run (other hosts: its
    heartbeat decides); not once it released the session (it shut down)."""
    if row.released_at is not None:
        return False
    if row.server_host == server_process.HOST:
        return server_process.is_running(row.server_pid, row.server_started_at)
    return True


def _silent_for(row: AudioSession) -> float:
    return _since(row.heartbeat_at)


def _since(moment: dt.datetime) -> float:
    return (timezone.now() - moment) / dt.timedelta(seconds=1)


# Stored with the session as its own (not an engine's option): `_params` reads them.
SESSION_PARAMETERS = frozenset(
    {
        "detail",
        "resumable",
        "endpointingMs",
        "vadEvents",
        "replyStream",
        "bargeIn",
        "silenceMs",
        "wordTimes",
    }
)


def _params(row: AudioSession) -> StreamParams:
    stored = row.parameters
    options = {
        name: str(value)
        for name, value in stored.items()
        if name not in SESSION_PARAMETERS
    }
    endpointing = stored.get("endpointingMs")
    silence = stored.get("silenceMs")
    return StreamParams(
        reply_stream=bool(stored.get("replyStream")),
        barge_in=bool(stored.get("bargeIn")),
        silence_ms=silence if isinstance(silence, int) else None,
        # language=auto goes on in the language identified (no second message).
        language=row.detected_language or row.language or "en-US",
        encoding=row.encoding or "pcm",
        sample_rate=row.sample_rate or 16000,
        send_partials=row.send_partials,
        detail=bool(stored.get("detail")),
        options=options,
        endpointing_ms=endpointing if isinstance(endpointing, int) else None,
        vad_events=bool(stored.get("vadEvents")),
        word_times=bool(stored.get("wordTimes")),
    )


def _replay(stored: StoredSession, *, detail: bool) -> list[str]:
    """The stored messages after the client's seq, in seq order."""
    numbered: list[tuple[int, str]] = []
    for final in stored.replay_finals:
        event = TranscriptEvent(
            text=final.text,
            is_partial=False,
            start=final.start_seconds,
            end=final.end_seconds,
            result_id=final.result_id,
        )
        message = protocol.event_message(event, detail=detail)
        numbered.append((final.message_seq or 0, message))
    for batch in stored.replay_replies:
        numbered.append((batch.reply_seq or 0, _reply_message(batch)))
    return [protocol.numbered(text, seq) for seq, text in sorted(numbered)]


def _reply_message(batch: ReceiverBatch) -> str:
    # As SessionVoice.reply_message sends it (a failed batch is never numbered).
    audio = bytes(batch.reply_audio) if batch.reply_audio else None
    return json.dumps(
        {
            "type": "server_response",
            "message": batch.reply_text,
            "audio": base64.b64encode(audio).decode() if audio else None,
            "batch_id": str(batch.batch_id),
        }
    )


async def _refuse(transport: Transport, refusal: Close) -> None:
    logger.info("resume refused (%s): %s", refusal.code, refusal.kind)
    busy = refusal is protocol.RESUME_BUSY
    metrics.RESUMES.labels(outcome="busy" if busy else "refused").inc()
    await transport.send_text(protocol.error_message(refusal.message))
    await transport.close(refusal.code, None)
