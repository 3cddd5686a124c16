"""The session timeline the admin shows on a session's page (presentation)."""

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db.models import Count

from transcription.models import AudioSession
from transcription.streaming.protocol import close_code_label


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened in a session, for the conversation view."""

    at: dt.datetime
    kind: str  # "start", "final", "batch", "reply", "error", "end"
    text: str
    detail: str = ""
    audio_batch_pk: int | None = None  # a reply whose speech was kept: a player
    order: int = 0  # breaks ties between entries with the same time


def _start_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    params = ", ".join(
        f"{k}={v}"
        for k, v in (
            ("language", session.language),
            ("identified", session.detected_language),
            ("encoding", session.encoding),
            ("sampleRate", session.sample_rate),
        )
        if v
    )
    yield TimelineEntry(session.started_at, "start", "session started", params, order=0)
    if session.ended_at:
        reason = f" ({session.close_reason})" if session.close_reason else ""
        yield TimelineEntry(
            session.ended_at,
            "end",
            f"session {session.status}",
            f"close {close_code_label(session.close_code)}{reason}",
            order=9,
        )


def _final_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    for t in session.transcripts.order_by("seq"):
        times = ""
        if t.start_seconds is not None and t.end_seconds is not None:
            times = f"{t.start_seconds:.2f} to {t.end_seconds:.2f} s of audio"
        yield TimelineEntry(t.created_at, "final", t.text, times, order=2)


def _error_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    for e in session.errors.order_by("created_at", "pk"):
        yield TimelineEntry(
            e.created_at, "error", e.message, f"{e.kind}, close {e.close_code}", order=5
        )


def _batch_entries(session: AudioSession) -> Iterable[TimelineEntry]:
    """Batches sent to the receiver and their replies."""
    for batch in (
        session.batches.without_audio()
        .annotate(finals=Count("transcripts"))
        .order_by("created_at", "pk")
    ):
        detail = f"{batch.get_status_display()}, {batch.attempts} attempt(s)"
        if batch.last_error:
            detail += f": {batch.last_error}"
        yield TimelineEntry(
            batch.due_at if batch.delivered_at is None else batch.delivered_at,
            "batch",
            f"{batch.finals} final(s) sent to the receiver",
            detail,
            order=3,
        )
        if batch.delivered_at and batch.reply_text:
            speech = f"speech {batch.tts_status or 'none'}"
            if batch.tts_error:
                speech += f": {batch.tts_error}"
            yield TimelineEntry(
                batch.delivered_at,
                "reply",
                batch.reply_text,
                speech,
                audio_batch_pk=batch.pk if batch.has_audio else None,
                order=4,
            )


# Each source turns one kind of related record into timeline entries.
TIMELINE_SOURCES: list[Callable[[AudioSession], Iterable[TimelineEntry]]] = [
    _start_entries,
    _final_entries,
    _batch_entries,
    _error_entries,
]


def session_timeline(*, session: AudioSession) -> list[TimelineEntry]:
    """The whole conversation of a session, in the order it happened."""
    entries = [entry for source in TIMELINE_SOURCES for entry in source(session)]
    return sorted(entries, key=lambda e: (e.at, e.order))
