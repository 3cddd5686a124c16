"""Browser pages for a logged-in user: Talk (the microphone), History, downloads."""

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from transcription import selectors
from transcription.engines import get_engine
from transcription.exports import EXPORT_FORMATS, render_session

HISTORY_PAGE_SIZE = 20


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
            "default_language": "en-US" if "en-US" in caps.languages else "",
            "nav": "talk",
        },
    )


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    """The user's own sessions, newest first, each with its transcript."""
    sessions = selectors.session_history(user=request.user)
    page = Paginator(sessions, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "transcription/history.html",
        {"page": page, "formats": EXPORT_FORMATS, "nav": "history"},
    )


@login_required
@require_GET
def session_download(request: HttpRequest, session_id, fmt: str) -> HttpResponse:
    """One of the user's sessions as a txt, srt or json file."""
    if fmt not in EXPORT_FORMATS:
        raise Http404("Unknown format.")
    session = selectors.session_get_own(user=request.user, session_id=session_id)
    if session is None:
        raise Http404("No such session.")
    content, content_type = render_session(session, fmt)
    response = HttpResponse(content, content_type=content_type)
    filename = f"session-{session.started_at:%Y%m%d-%H%M%S}-{str(session.pk)[:8]}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
