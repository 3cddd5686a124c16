"""export_transcripts and purge_sessions: outputs and failures."""

import datetime as dt
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.transcription.sessions import record_session, record_voice_session
from transcription import services
from transcription.models import AudioSession, SessionError, Transcript

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def sessions(user, api_token, django_user_model):
    bob = django_user_model.objects.create_user(username="bob")
    token, _ = api_token
    return {
        "old": record_session(user=user, token=token, finals=["first"], days_ago=2),
        "new": record_session(user=user, token=token, finals=[("second", 0.5, 1.0)]),
        "bob": record_session(user=bob, finals=["from bob"], days_ago=1),
    }


def test_export_everything_as_txt_oldest_first(sessions):
    lines = [x for x in run("export_transcripts").splitlines() if not x.startswith("#")]
    assert [x for x in lines if x] == ["first", "from bob", "second"]


def test_export_one_user_as_json(sessions, api_token):
    output = run("export_transcripts", "--user", "alice", "--format", "json")
    data = json.loads(output)
    assert [d["transcripts"][0]["text"] for d in data] == ["first", "second"]
    assert api_token[1] not in output


def test_export_last_as_srt(sessions):
    assert run(
        "export_transcripts", "--last", "--user", "alice", "--format", "srt"
    ) == ("1\n00:00:00,500 --> 00:00:01,000\nsecond\n")


def test_export_one_session_by_id_or_prefix(sessions):
    session = sessions["bob"]
    for given in (str(session.pk), str(session.pk)[:13]):
        output = run("export_transcripts", "--session", given)
        assert output.splitlines()[1:] == ["from bob"]


def test_export_csv_of_sessions(sessions):
    output = run("export_transcripts", "--format", "csv")
    assert output.splitlines()[0].startswith('"id","user","token_name","token_prefix",')
    assert len(output.splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody"], "no user named 'nobody'"),
        (["--session", "not-a-session"], "no single session matches 'not-a-session'"),
        (["--session", "00000000-0000-0000-0000-000000000000"], "no single session"),
    ],
)
def test_export_bad_input_fails(sessions, args, message):
    with pytest.raises(CommandError, match=message):
        run("export_transcripts", *args)


def test_export_nothing_to_export_fails(db):
    with pytest.raises(CommandError, match="no sessions match"):
        run("export_transcripts", "--last")


def test_export_session_and_last_are_exclusive(sessions):
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("export_transcripts", "--last", "--session", "abcd")


def test_purge_dry_run_counts_and_deletes_nothing(user):
    record_session(user=user, finals=["a", "b"], days_ago=40)
    record_session(
        user=user, finals=["c"], close_code=1011, error=("engine", "x"), days_ago=31
    )
    record_session(user=user, finals=["recent"], days_ago=5)
    output = run("purge_sessions", "--older-than", "30", "--dry-run")
    lines = output.splitlines()
    assert lines[0].startswith("Would delete 2 sessions started before ")
    assert lines[1:] == [
        "  transcription.SessionError: 1",
        "  transcription.Transcript: 3",
    ]
    assert AudioSession.objects.count() == 3


def test_purge_dry_run_counts_what_the_purge_deletes(user):
    record_session(user=user, finals=["a", "b"], error=("engine", "x"), days_ago=3)
    record_voice_session(user=user)
    later = timezone.now() + dt.timedelta(minutes=1)
    would = services.sessions_purge(older_than=later, dry_run=True)
    assert would["transcription.AudioSession"] == 2
    assert would["transcription.ReceiverBatch"] == 2
    assert services.sessions_purge(older_than=later) == would
    assert not AudioSession.objects.exists()


def test_purge_deletes_old_sessions_in_batches(user):
    for _ in range(5):
        record_session(user=user, finals=["old"], days_ago=10)
    keep = record_session(user=user, finals=["recent"], days_ago=1)
    live = record_session(user=user, finals=["live"], close_code=None)
    stale = record_session(user=user, close_code=None, days_ago=10)  # a crashed server
    output = run("purge_sessions", "--older-than", "7", "--batch-size", "2")
    assert output.splitlines()[0].startswith("Deleted 6 sessions")
    assert "  transcription.Transcript: 5" in output.splitlines()
    assert set(AudioSession.objects.values_list("pk", flat=True)) == {keep.pk, live.pk}
    assert not AudioSession.objects.filter(pk=stale.pk).exists()
    assert Transcript.objects.count() == 2
    assert not SessionError.objects.exists()


def test_purge_keeps_live_sessions_even_with_a_short_window(user):
    live = record_session(user=user, close_code=None, days_ago=2)
    # Started two days ago and still going: its server's heartbeat is recent.
    services.session_heartbeat(session_id=live.pk, audio_bytes=0, bytes_per_second=None)
    assert run("purge_sessions", "--older-than", "1").startswith("Deleted 0 sessions")
    assert AudioSession.objects.filter(pk=live.pk).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "0"], "--older-than must be at least 1 day"),
        (["--older-than", "3", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--older-than", "soon"], "invalid int value"),
        ([], "the following arguments are required: --older-than"),
    ],
)
def test_purge_bad_input_fails(db, args, message):
    with pytest.raises(CommandError, match=message):
        run("purge_sessions", *args)
