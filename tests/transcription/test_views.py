"""The Talk page, History (own sessions only) and transcript downloads."""

import datetime as dt
import json
import re
import socket

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from accounts.services import api_token_create
from transcription import services
from transcription.engines import Capabilities, TranscriptEvent
from transcription.models import AudioSession, ReceiverBatch, SessionError, Transcript
from transcription.streaming.protocol import CLOSE_MEANINGS
from transcription.templatetags.transcripts import clock
from transcription.voice_loop.receiver import (
    ReceiverConfig,
    ReceiverError,
    receiver_exchange,
)
from transcription.web import exports

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("echo_engine")]


class TwoLanguageEngine:
    """Only what the Talk page reads of an engine."""

    name = "two"
    capabilities = Capabilities(
        languages=("de-DE", "fr-FR"),
        encodings=("pcm",),
        min_sample_rate=16000,
        max_sample_rate=16000,
    )


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user(username="bob", password="pw-bob-12")


def make_session(user, texts, *, minutes_ago=0, status="completed", timed=True):
    session = AudioSession.objects.create(
        user=user,
        engine="echo",
        language="en-US",
        status=status,
        started_at=timezone.now() - dt.timedelta(minutes=minutes_ago),
        audio_seconds=4.5,
    )
    for seq, text in enumerate(texts, start=1):
        Transcript.objects.create(
            session=session,
            seq=seq,
            text=text,
            start_seconds=(seq - 1) * 2.0 if timed else None,
            end_seconds=(seq - 1) * 2.0 + 1.5 if timed else None,
        )
    return session


def test_talk_page_has_the_controls_and_no_token(logged_in, user):
    _, raw = api_token_create(user=user, name="laptop")
    response = logged_in.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    for testid in ["start", "stop", "partial", "finals", "replies", "language"]:
        assert f'data-testid="{testid}"' in body
    assert '<option value="en-US" selected>en-US</option>' in body  # echo's list
    assert 'data-ws-path="/ws/transcribe/"' in body
    assert "pcm-worklet" in body
    assert raw not in body
    assert "token=" not in body


def test_talk_page_gets_the_close_code_texts_once(logged_in):
    body = logged_in.get("/").content.decode()
    served = re.search(
        r'<script id="close-texts" type="application/json">(.*?)</script>', body
    )
    assert served is not None
    texts = json.loads(served.group(1))
    assert texts == {str(code): m.text for code, m in CLOSE_MEANINGS.items()}
    assert texts["1013"] == "The server is busy."


def test_talk_page_languages_come_from_the_engine(logged_in, settings):
    settings.TRANSCRIPTION_ENGINE = "tests.transcription.test_views.TwoLanguageEngine"
    body = logged_in.get("/").content.decode()
    assert '<option value="de-DE">de-DE</option>' in body
    assert '<option value="fr-FR">fr-FR</option>' in body
    assert "en-US" not in body


def test_static_files_are_served(client):
    for path in [
        "/static/js/talk.js",
        "/static/js/talk-replies.js",
        "/static/js/pcm-worklet.js",
        "/static/css/app.css",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path


def test_history_shows_own_sessions_newest_first(logged_in, user, bob):
    make_session(user, ["older words"], minutes_ago=30)
    newer = make_session(user, ["newer words", "and more"], minutes_ago=1)
    SessionError.objects.create(
        session=newer, kind="engine", message="Transcription failed: engine error."
    )
    make_session(bob, ["bob's secret"])
    make_session(user, [], status="rejected")
    response = logged_in.get("/history/")
    body = response.content.decode()
    assert response.status_code == 200
    assert (
        body.index("newer words") < body.index("and more") < body.index("older words")
    )
    assert "bob&#x27;s secret" not in body
    assert "bob's secret" not in body
    assert body.count('data-testid="history-session"') == 2
    assert "Transcription failed: engine error." in body
    assert f"/history/{newer.pk}/download/srt/" in body


def test_history_shows_the_language_identified(logged_in, user):
    asked = make_session(user, ["hello"], minutes_ago=2)
    auto = make_session(user, ["hej"], minutes_ago=1)
    AudioSession.objects.filter(pk=auto.pk).update(
        language="auto", detected_language="sv-SE", language_probability=0.97
    )
    body = logged_in.get("/history/").content.decode()
    shown = re.findall(r'data-testid="history-language">([^<]*)<', body)
    assert shown == ["auto → sv-SE", "en-US"]
    exported = logged_in.get(f"/history/{auto.pk}/download/json/").json()
    assert (exported["language"], exported["detected_language"]) == ("auto", "sv-SE")
    assert asked.detected_language == ""


def test_history_is_paginated(logged_in, user):
    for minutes in range(25):
        make_session(user, [f"words {minutes}"], minutes_ago=minutes)
    first = logged_in.get("/history/").content.decode()
    assert first.count('data-testid="history-session"') == 20
    second = logged_in.get("/history/?page=2").content.decode()
    assert second.count('data-testid="history-session"') == 5
    assert "words 24" in second


def test_history_when_empty(logged_in):
    assert "No sessions yet" in logged_in.get("/history/").content.decode()


def test_download_txt(logged_in, user):
    session = make_session(user, ["the weather is nice today", "turn on the lights"])
    response = logged_in.get(f"/history/{session.pk}/download/txt/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response["Content-Disposition"].startswith("attachment; filename=")
    assert response["Content-Disposition"].endswith('.txt"')
    header, *lines = response.content.decode().splitlines()
    assert header.startswith(f"# session {session.pk} user alice ")
    assert lines == ["the weather is nice today", "turn on the lights"]


def test_download_srt(logged_in, user):
    session = make_session(user, ["hello world", "goodbye"])
    body = logged_in.get(f"/history/{session.pk}/download/srt/").content.decode()
    assert "1\n00:00:00,000 --> 00:00:01,500\nhello world\n" in body
    assert "2\n00:00:02,000 --> 00:00:03,500\ngoodbye\n" in body


def test_download_srt_without_timings_still_orders_cues(logged_in, user):
    session = make_session(user, ["first", "second"], timed=False)
    body = logged_in.get(f"/history/{session.pk}/download/srt/").content.decode()
    cues = [line for line in body.splitlines() if "-->" in line]
    assert len(cues) == 2
    assert cues[0] < cues[1]


def test_download_json(logged_in, user):
    session = make_session(user, ["hello world"])
    response = logged_in.get(f"/history/{session.pk}/download/json/")
    assert response["Content-Type"].startswith("application/json")
    document = json.loads(response.content)
    assert document["id"] == str(session.pk)
    assert [t["text"] for t in document["transcripts"]] == ["hello world"]


def test_download_of_someone_elses_session_or_a_bad_format_is_a_404(
    logged_in, user, bob
):
    theirs = make_session(bob, ["bob's words"])
    mine = make_session(user, ["mine"])
    assert logged_in.get(f"/history/{theirs.pk}/download/txt/").status_code == 404
    assert logged_in.get(f"/history/{mine.pk}/download/pdf/").status_code == 404


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, ""), (0, "0:00"), (1.9, "0:01"), (75.2, "1:15"), (3725, "1:02:05")],
)
def test_clock_filter(seconds, shown):
    assert clock(seconds) == shown


def add_reply(session, seqs, text, audio=b"ID3 fake mp3"):
    batch = ReceiverBatch.objects.create(
        session=session,
        status=ReceiverBatch.Status.DELIVERED,
        due_at=timezone.now(),
        delivered_at=timezone.now(),
        reply_text=text,
        reply_audio=audio,
    )
    session.transcripts.filter(seq__in=seqs).update(batch=batch)
    return batch


def test_history_shows_each_reply_after_the_finals_it_answers(logged_in, user):
    session = make_session(user, ["what time is it", "in paris", "and the weather"])
    first = add_reply(session, [1, 2], "It is noon in Paris.")
    add_reply(session, [3], "Sunny.", audio=None)
    body = logged_in.get("/history/").content.decode()
    order = ["what time is it", "in paris", "It is noon in Paris.", "and the weather"]
    positions = [body.index(text) for text in [*order, "Sunny."]]
    assert positions == sorted(positions)
    assert body.count('data-testid="history-reply"') == 2
    assert body.count("<audio") == 1  # the second reply has no speech
    assert f"/history/{session.pk}/replies/{first.pk}.mp3" in body


def test_reply_audio_only_for_its_owner(logged_in, user, bob):
    mine = make_session(user, ["hello"])
    batch = add_reply(mine, [1], "Hi.", audio=b"ID3 my reply")
    response = logged_in.get(f"/history/{mine.pk}/replies/{batch.pk}.mp3")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/mpeg"
    assert response.content == b"ID3 my reply"
    theirs = make_session(bob, ["hello"])
    other = add_reply(theirs, [1], "Hi Bob.")
    assert (
        logged_in.get(f"/history/{theirs.pk}/replies/{other.pk}.mp3").status_code == 404
    )
    assert (
        logged_in.get(f"/history/{mine.pk}/replies/{other.pk}.mp3").status_code == 404
    )
    silent = add_reply(make_session(user, ["x"]), [1], "No speech.", audio=None)
    url = f"/history/{silent.session_id}/replies/{silent.pk}.mp3"
    assert logged_in.get(url).status_code == 404


def _port_nobody_listens_on() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def voice_failures(user):
    """A session whose first batch got no answer (the receiver was unreachable at a
    URL with credentials) and whose second was answered but not spoken."""
    port = _port_nobody_listens_on()
    config = ReceiverConfig(
        url=f"http://alice:s3cret@127.0.0.1:{port}/reply?token=abc123", timeout=2
    )
    with pytest.raises(ReceiverError) as refused:
        async_to_sync(receiver_exchange)(config, {"batch_id": "b"})
    session = make_session(user, ["what time is it", "and the weather"])
    failed = services.transcript_add_final(
        session_id=session.pk,
        seq=3,
        event=TranscriptEvent(text="hello?", is_partial=False),
        audio_bytes=0,
        bytes_per_second=None,
        silence_seconds=0,
    ).batch
    assert services.batch_claim(batch_pk=failed.pk, worker_id="w", lease_seconds=60)
    services.batch_record_failure(
        batch_pk=failed.pk, worker_id="w", message=refused.value.message, retry=False
    )
    spoken = add_reply(session, [1, 2], "Sunny.", audio=None)
    ReceiverBatch.objects.filter(pk=spoken.pk).update(
        status=ReceiverBatch.Status.CLAIMED, claimed_by="w"
    )
    services.batch_record_reply(
        batch_pk=spoken.pk,
        worker_id="w",
        reply="Sunny.",
        audio=None,
        tts_engine="polly",
        tts_error="Polly failed: Could not connect to http://127.0.0.1:9/v1/speech",
    )
    return session, [f"127.0.0.1:{port}", "unreachable", "Polly failed", "127.0.0.1:9"]


def test_history_and_downloads_tell_voice_failures_in_plain_words(
    logged_in, voice_failures
):
    session, details = voice_failures
    body = logged_in.get("/history/").content.decode()
    assert exports.NO_ANSWER in body
    assert exports.NOT_SPOKEN in body
    assert body.index("Sunny.") < body.index(exports.NOT_SPOKEN)
    assert body.index("hello?") < body.index(exports.NO_ANSWER)
    downloads = {
        fmt: logged_in.get(
            reverse("transcription:session_download", args=[session.pk, fmt])
        ).content.decode()
        for fmt in ("txt", "srt", "json")
    }
    batches = json.loads(downloads["json"])["batches"]
    assert [b["error"] for b in batches] == [exports.NO_ANSWER, exports.NOT_SPOKEN]
    for page in [body, *downloads.values()]:
        for detail in [*details, "s3cret", "abc123"]:
            assert detail not in page


def test_the_admin_keeps_the_detail_of_voice_failures(admin_client, voice_failures):
    session, details = voice_failures
    url = reverse("admin:transcription_audiosession_change", args=[session.pk])
    body = admin_client.get(url).content.decode()
    for detail in details:
        assert detail in body
    assert "s3cret" not in body
    assert "abc123" not in body


def test_history_has_an_anchor_per_session_and_players_load_their_duration(
    logged_in, user
):
    session = make_session(user, ["hello"])
    add_reply(session, [1], "Hi.")
    body = logged_in.get("/history/").content.decode()
    assert f'id="session-{session.pk}"' in body
    assert '<audio controls preload="metadata"' in body


def test_history_latest_opens_the_newest_browser_session(logged_in, user, bob):
    assert logged_in.get("/history/latest/").url == "/history/"
    browser = make_session(user, ["from the browser"], minutes_ago=5)
    AudioSession.objects.filter(pk=browser.pk).update(auth_method="session")
    make_session(user, ["a script, later"], minutes_ago=1)  # a token session
    other = make_session(bob, ["bob's"])
    AudioSession.objects.filter(pk=other.pk).update(auth_method="session")
    response = logged_in.get("/history/latest/")
    assert response.status_code == 302
    assert response.url == f"/history/#session-{browser.pk}"
    talk = logged_in.get("/").content.decode()
    assert 'data-history-latest="/history/latest/"' in talk
