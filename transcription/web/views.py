"""Browser pages for a logged-in user: Talk (the microphone), History, downloads."""

import json
from dataclasses import dataclass

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from transcription import selectors
from transcription.engines import get_engine
from transcription.models import AudioSession
from transcription.streaming.protocol import close_texts
from transcription.web import exports

HISTORY_PAGE_SIZE = 20
DOWNLOAD_FORMATS = ("txt", "srt", "json")


@login_required
@require_GET
def talk(request: HttpRequest) -> HttpResponse:
    """The Talk page; its WebSocket is authenticated by the session cookie."""
    caps = get_engine().capabilities
    return render(
        request,
        "transcription/talk.html",
        {
            "languages": caps.languages,
            "identifies_language": caps.identifies_language,
            "default_language": "en-US" if "en-US" in caps.languages else "",
            "close_texts": close_texts(),
            "nav": "talk",
        },
    )


@dataclass(frozen=True)
class Turn:
    """One line of a conversation: what the user said, or the receiver's reply."""

    kind: str  # "final" or "reply"
    text: str
    start_seconds: float | None = None
    batch_pk: int | None = None
    has_audio: bool = False
    problem: str = ""  # in plain words: no answer, or no speech


def session_conversation(*, session: AudioSession) -> list[Turn]:
    """Finals in order, each batch's reply right after the last final it answers.

    Reads only what session_history() loaded.
    """
    replies = {b.pk: b for b in getattr(session, "replies", [])}
    turns: list[Turn] = []
    finals = list(session.transcripts.all())
    for index, final in enumerate(finals):
        turns.append(Turn("final", final.text, start_seconds=final.start_seconds))
        following = finals[index + 1].batch_id if index + 1 < len(finals) else None
        if final.batch_id in replies and following != final.batch_id:
            batch = replies.pop(final.batch_id)
            turns.append(
                Turn(
                    "reply",
                    batch.reply_text,
                    batch_pk=batch.pk,
                    has_audio=batch.has_audio,
                    problem=exports.batch_problem_for_user(batch),
                )
            )
    return turns


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    """The user's own sessions, newest first, each with its transcript."""
    sessions = selectors.session_history(user=request.user)
    page = Paginator(sessions, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(session, session_conversation(session=session)) for session in page]
    return render(
        request,
        "transcription/history.html",
        {"page": page, "rows": rows, "formats": DOWNLOAD_FORMATS, "nav": "history"},
    )


@login_required
@require_GET
def history_latest(request: HttpRequest) -> HttpResponse:
    """History at the user's newest browser session (the one Talk just finished)."""
    latest = selectors.session_latest_in_browser(user=request.user)
    url = reverse("transcription:history")
    return redirect(f"{url}#session-{latest.pk}" if latest else url)


@login_required
@require_GET
def session_download(request: HttpRequest, session_id, fmt: str) -> HttpResponse:
    """One of the user's sessions as a txt, srt or json file."""
    if fmt not in DOWNLOAD_FORMATS:
        raise Http404("Unknown format.")
    own = exports.sessions_for_export(
        username=request.user.get_username(), session_ids=[session_id]
    )
    if not own:
        raise Http404("No such session.")
    session = own[0]
    if fmt == "json":
        as_dict = exports.session_as_dict(session, for_user=True)
        content = json.dumps(as_dict, indent=2) + "\n"
    else:
        content = exports.export([session], fmt)
    response = HttpResponse(content, content_type=exports.CONTENT_TYPES[fmt])
    filename = f"session-{session.started_at:%Y%m%d-%H%M%S}-{str(session.pk)[:8]}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
def reply_audio(request: HttpRequest, session_id, batch_pk: int) -> HttpResponse:
    """The spoken reply (MP3) of one of the user's own sessions."""
    audio = selectors.reply_audio_get_own(
        user=request.user, session_id=session_id, batch_pk=batch_pk
    )
    if audio is None:
        raise Http404("No such reply.")
    response = HttpResponse(audio, content_type="audio/mpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response
