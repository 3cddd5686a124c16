"""A session's transcript as a downloadable file: plain text, SubRip subtitles or JSON.

Pure functions over a session and its stored finals (no writes).
"""

import json

from transcription.models import AudioSession

EXPORT_FORMATS = ("txt", "srt", "json")
CONTENT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "json": "application/json",
}
_FALLBACK_SECONDS = 2.0  # length given to a final whose engine reported no timing


def _timestamp(seconds: float) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def _srt(transcripts) -> str:
    blocks, previous_end = [], 0.0
    for number, transcript in enumerate(transcripts, start=1):
        start = transcript.start_seconds
        start = previous_end if start is None else start
        end = transcript.end_seconds
        end = start + _FALLBACK_SECONDS if end is None or end <= start else end
        previous_end = end
        blocks.append(
            f"{number}\n{_timestamp(start)} --> {_timestamp(end)}\n{transcript.text}\n"
        )
    return "\n".join(blocks)


def _json(session: AudioSession, transcripts) -> str:
    document = {
        "session_id": str(session.pk),
        "user": session.user.get_username() if session.user else None,
        "language": session.language,
        "engine": session.engine,
        "status": session.status,
        "started_at": session.started_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "audio_seconds": session.audio_seconds,
        "transcripts": [
            {
                "seq": t.seq,
                "text": t.text,
                "start": t.start_seconds,
                "end": t.end_seconds,
                "created_at": t.created_at.isoformat(),
            }
            for t in transcripts
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_session(session: AudioSession, fmt: str) -> tuple[str, str]:
    """(content, content_type) of the session's transcript in `fmt` (txt, srt, json)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}: use one of {EXPORT_FORMATS}.")
    transcripts = list(session.transcripts.order_by("seq"))
    if fmt == "txt":
        content = "".join(f"{t.text}\n" for t in transcripts)
    elif fmt == "srt":
        content = _srt(transcripts)
    else:
        content = _json(session, transcripts)
    return content, CONTENT_TYPES[fmt]
