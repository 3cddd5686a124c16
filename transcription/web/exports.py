"""Exports of sessions and their transcripts: txt, json, srt, csv.

`sessions_for_export` loads the sessions with all an export reads; each exporter is a
pure function of such sessions that returns text. Nothing here touches a token's secret:
a session names its token by name and public prefix only. What a user downloads says
what went wrong in the voice loop in plain words (`for_user`); the admin's exports and
`export_transcripts` keep the stored detail (addresses, exception names).
"""

import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence

from django.db.models import Prefetch

from transcription import selectors
from transcription.models import AudioSession, ReceiverBatch, Transcript

FORMATS = ("txt", "json", "srt", "csv")
CONTENT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}
MIN_CUE_SECONDS = 0.5

# What an end user reads when the voice loop failed them; the stored errors say why,
# for the admin, and may name the receiver's address.
NO_ANSWER = "The assistant could not answer."
NOT_SPOKEN = "The reply could not be spoken."


def sessions_for_export(
    *,
    username: str | None = None,
    session_ids: Iterable[uuid.UUID] | None = None,
    last: bool = False,
) -> list[AudioSession]:
    """Sessions (oldest first) with transcripts prefetched, for exports."""
    sessions = selectors.session_list_with_counts().prefetch_related(
        Prefetch("transcripts", queryset=Transcript.objects.order_by("seq"))
    )
    batches = ReceiverBatch.objects.defer("reply_audio")
    sessions = sessions.prefetch_related(
        Prefetch("batches", queryset=batches.prefetch_related("transcripts"))
    )
    if username:
        sessions = sessions.filter(user__username=username)
    if session_ids is not None:
        sessions = sessions.filter(pk__in=list(session_ids))
    if last:
        return list(sessions.order_by("-started_at", "-pk")[:1])
    return list(sessions.order_by("started_at", "pk"))


def batch_problem_for_user(batch: ReceiverBatch) -> str:
    """A batch's failure in plain words ("" when there is none, or not yet one)."""
    if batch.status == ReceiverBatch.Status.FAILED:
        return NO_ANSWER
    if batch.tts_status == ReceiverBatch.TtsStatus.FAILED:
        return NOT_SPOKEN
    return ""


def _transcripts(session: AudioSession) -> list[Transcript]:
    return sorted(session.transcripts.all(), key=lambda t: t.seq)


def _username(session: AudioSession) -> str:
    return session.user.get_username() if session.user else ""


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def export_txt(sessions: Iterable[AudioSession]) -> str:
    """A `# session …` header per session, then one final transcript per line."""
    blocks = []
    for s in sessions:
        header = (
            f"# session {s.pk} user {_username(s) or '-'} "
            f"started {s.started_at:%Y-%m-%d %H:%M:%S %Z} "
            f"{s.language or '-'} {s.status}"
        )
        lines = [header, *(t.text for t in _transcripts(s))]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def session_as_dict(session: AudioSession, *, for_user: bool = False) -> dict:
    """The JSON shape of one session (also what the browser app downloads, with
    `for_user`: batch errors in plain words)."""
    token = session.token
    return {
        "id": str(session.pk),
        "user": _username(session) or None,
        "token": {"name": token.name, "prefix": token.prefix} if token else None,
        "engine": session.engine,
        "language": session.language,
        "detected_language": session.detected_language,
        "encoding": session.encoding,
        "sample_rate": session.sample_rate,
        "started_at": _iso(session.started_at),
        "ended_at": _iso(session.ended_at),
        "status": session.status,
        "close_code": session.close_code,
        "close_reason": session.close_reason,
        "audio_seconds": session.audio_seconds,
        "transcripts": [
            {
                "seq": t.seq,
                "text": t.text,
                "start": t.start_seconds,
                "end": t.end_seconds,
                "created_at": _iso(t.created_at),
            }
            for t in _transcripts(session)
        ],
        **_replies(session, for_user=for_user),
    }


def _replies(session: AudioSession, *, for_user: bool) -> dict:
    """The voice loop's batches and replies."""
    return {
        "batches": [
            {
                "batch_id": str(b.batch_id),
                "status": b.status,
                "attempts": b.attempts,
                "finals": sorted(t.seq for t in b.transcripts.all()),
                "reply": b.reply_text,
                "delivered_at": _iso(b.delivered_at),
                "error": batch_problem_for_user(b) if for_user else b.last_error,
            }
            for b in sorted(session.batches.all(), key=lambda b: (b.created_at, b.pk))
        ]
    }


def export_json(sessions: Iterable[AudioSession]) -> str:
    return json.dumps([session_as_dict(s) for s in sessions], indent=2) + "\n"


def srt_timestamp(seconds: float) -> str:
    """HH:MM:SS,mmm (more hour digits past 99 h); a time before the start is 0."""
    # Clamped before scaling: a huge negative time overflowed to -inf in round().
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def cue_times(session: AudioSession) -> list[tuple[float, float, str]]:
    """(start, end, text) per final, in seconds of the session's audio.

    The stored start/end times are used as they are. A final without them starts
    where the previous cue ended and ends when it was stored (relative to the
    session's start); every cue lasts at least MIN_CUE_SECONDS.
    """
    cues = []
    previous_end = 0.0
    for t in _transcripts(session):
        start = t.start_seconds if t.start_seconds is not None else previous_end
        if t.end_seconds is not None:
            end = t.end_seconds
        else:
            end = (t.created_at - session.started_at).total_seconds()
        end = max(end, start + MIN_CUE_SECONDS)
        cues.append((start, end, t.text))
        previous_end = end
    return cues


def export_srt(sessions: Sequence[AudioSession]) -> str:
    """SubRip cues; several sessions share one clock that starts with the first."""
    blocks: list[str] = []
    origin = min((s.started_at for s in sessions), default=None)
    for s in sorted(sessions, key=lambda s: s.started_at):
        offset = (s.started_at - origin).total_seconds() if origin else 0.0
        for start, end, text in cue_times(s):
            number = len(blocks) + 1
            span = f"{srt_timestamp(offset + start)} --> {srt_timestamp(offset + end)}"
            blocks.append(f"{number}\n{span}\n{text}\n")
    return "\n".join(blocks)


CSV_COLUMNS = (
    "id",
    "user",
    "token_name",
    "token_prefix",
    "engine",
    "language",
    "started_at",
    "ended_at",
    "duration_seconds",
    "status",
    "close_code",
    "close_reason",
    "audio_seconds",
    "finals",
    "errors",
    "batches",
)


# A spreadsheet reads a cell as a formula when it starts with one of these (OWASP
# CSV injection). It splits a row on its locale's separator, not necessarily the
# comma we write, so a trigger right after any separator (`x;=HYPERLINK(…)` where `;`
# separates) starts a cell too.
FORMULA_TRIGGERS = "=+-@\t\r"
_TRIGGER_AFTER_SEPARATOR = re.compile(r"([,;|\t\r\n][ \t\r\n]*)([=+\-@])")


def _csv_cell(value) -> str:
    """Text for a spreadsheet that no spreadsheet runs: an apostrophe before a
    formula trigger at the start and after every separator, whatever the locale's
    separator. Numbers are written as they are (`-1` stays a number). Every cell
    is quoted too (export_csv)."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    text = _TRIGGER_AFTER_SEPARATOR.sub(r"\1'\2", str(value))
    if text[:1] in FORMULA_TRIGGERS:
        return "'" + text
    return text


def _count(session: AudioSession, name: str) -> int | None:
    """An annotated `<name>_count` if the query made one, else None."""
    return getattr(session, f"{name}_count", None)


def export_csv(sessions: Iterable[AudioSession]) -> str:
    """One row per session (no transcript text): who, what, when, how it ended."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    for s in sessions:
        duration = s.duration_seconds
        row = (
            s.pk,
            _username(s),
            s.token.name if s.token else "",
            s.token.prefix if s.token else "",
            s.engine,
            s.language,
            _iso(s.started_at),
            _iso(s.ended_at),
            round(duration, 3) if duration is not None else None,
            s.status,
            s.close_code,
            s.close_reason,
            s.audio_seconds,
            _count(s, "finals"),
            _count(s, "errors"),
            _count(s, "batches"),
        )
        writer.writerow([_csv_cell(v) for v in row])
    return out.getvalue()


EXPORTERS: dict[str, Callable[[Sequence[AudioSession]], str]] = {
    "txt": export_txt,
    "json": export_json,
    "srt": export_srt,
    "csv": export_csv,
}


def export(sessions: Sequence[AudioSession], fmt: str) -> str:
    """The sessions in format `fmt` (one of FORMATS)."""
    return EXPORTERS[fmt](sessions)
