"""The dashboard's latency figures and charts (inline SVG), and a session's latency."""

import datetime as dt
import re

import pytest
import time_machine
from django.urls import reverse

from tests.transcription.sessions import record_session
from transcription.admin.dashboard import percentile
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db

NOON = dt.datetime(2026, 6, 10, 12, 30, tzinfo=dt.UTC)


def chart(html: str, chart_id: str) -> str:
    match = re.search(
        rf'<figure class="chart" id="{chart_id}">(.*?)</figure>', html, re.S
    )
    assert match, chart_id
    return match[1]


def rects(svg: str, css: str) -> list[str]:
    return re.findall(rf'<rect class="{css}"[^>]*><title>([^<]*)</title>', svg)


def _latency(session, **fields):
    AudioSession.objects.filter(pk=session.pk).update(**fields)


@pytest.fixture
def day(user):
    """Sessions at 12:xx (three), 10:xx and 07:xx today, and one two days ago."""
    with time_machine.travel(NOON, tick=False):
        now = [record_session(user=user, audio_seconds=5) for _ in range(2)]
        now.append(record_session(user=user, close_code=1011, error=("engine", "x")))
        refused = record_session(
            user=user, close_code=1008, refused=True, days_ago=2 / 24
        )
        earlier = record_session(user=user, days_ago=5.5 / 24)
        record_session(user=user, days_ago=2)
        for session, latency in zip(now, (0.3, 0.5, 0.9), strict=True):
            _latency(session, final_latency_p50=latency, final_latency_max=latency * 2)
        _latency(earlier, final_latency_p50=1.2, final_latency_max=1.5)
        _latency(now[0], reply_latency_p50=2.0, reply_latency_max=3.5)
        yield {"now": now, "refused": refused, "earlier": earlier}


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([0.3], 95) == 0.3
    assert percentile([0.9, 0.3, 0.5], 50) == 0.5
    assert percentile([0.9, 0.3, 0.5], 95) == 0.9
    assert percentile(list(range(1, 101)), 95) == 95


def test_dashboard_charts(admin_client, day):
    with time_machine.travel(NOON, tick=False):
        html = admin_client.get(reverse("admin:index")).content.decode()

    sessions = chart(html, "sessions-per-hour")
    assert "<svg" in sessions
    assert rects(sessions, "bar") == [
        "07:00: 1 session",
        "10:00: 1 session",
        "12:00: 3 sessions",
    ]

    latency = chart(html, "latency-per-hour")
    assert rects(latency, "bar") == [
        "07:00: p50 1.20 s, p95 1.20 s (1 session)",
        "12:00: p50 0.50 s, p95 0.90 s (3 sessions)",
    ]
    assert len(rects(latency, "p95")) == 2

    closes = chart(html, "closes-by-code")
    assert rects(closes, "bar") == ["1000 normal: 3 (60.0 %)"]
    assert sorted(rects(closes, "bar error")) == [
        "1008 policy (auth, parameters, quota): 1 (20.0 %)",
        "1011 server or engine error: 1 (20.0 %)",
    ]

    final_today = re.sub(
        r"\s+",
        " ",
        re.sub(
            r"<[^>]+>",
            " ",
            html.split('id="final-latency-today">')[1].split("</div>")[0],
        ),
    )
    assert final_today.strip().startswith("0.50 / 1.20 s final latency today")
    reply_today = html.split('id="reply-latency-today">')[1].split("</div>")[0]
    assert "2.00 / 2.00 s" in reply_today


def test_empty_dashboard_says_so(admin_client, db):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "No sessions in the last 24 hours." in chart(html, "sessions-per-hour")
    assert "<svg" not in chart(html, "latency-per-hour")
    assert "— / — s" in html.split('id="final-latency-today">')[1]


def test_session_page_shows_its_latency(admin_client, user):
    session = record_session(user=user)
    _latency(
        session,
        first_partial_seconds=0.42,
        final_latency_p50=0.61,
        final_latency_max=1.5,
    )
    url = reverse("admin:transcription_audiosession_change", args=[session.pk])
    html = re.sub(r"\s+", " ", admin_client.get(url).content.decode())
    latency = html[html.index("Latency</h2>") :]
    assert '<label>First partial:</label> <div class="readonly">0.42 s' in latency
    assert "0.61 s / 1.50 s" in latency
    reply = '<label>Reply latency (median / worst):</label> <div class="readonly">—'
    assert reply in latency
