"""The admin dashboard: its figures, and latency charts drawn here as inline SVG.

Reads come from selectors; this module only turns them into figures and shapes
(bars in a fixed viewBox) that `admin/index.html` and `admin/transcription/chart.svg`
render. Latency
percentiles are over sessions: each session stores its median final and reply
latency, so "p95" is the 95th percentile of those medians (Prometheus has the
per-final histograms).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from django.utils import timezone

from transcription import selectors
from transcription.close_codes import OTHER, close_code_group
from transcription.models import SessionError
from transcription.streaming.protocol import CLOSE_NORMAL, close_code_label

WIDTH, HEIGHT = 480, 150
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 20  # room for the axis labels
HOURS = 24


@dataclass(frozen=True)
class Window:
    sessions: int
    audio_minutes: float


@dataclass(frozen=True)
class CloseCodeRate:
    code: int | str | None  # OTHER for the undocumented codes together
    label: str
    sessions: int
    percent: float


@dataclass(frozen=True)
class UserUsage:
    username: str
    sessions: int
    audio_minutes: float


@dataclass(frozen=True)
class Dashboard:
    active_now: int
    today: Window
    last_7_days: Window
    error_percent_7_days: float
    close_codes: list[CloseCodeRate]
    top_users: list[UserUsage]
    latest_errors: list[SessionError]


def _minutes(seconds: float) -> float:
    return round(seconds / 60, 1)


def _window(since: dt.datetime) -> Window:
    sessions, seconds = selectors.session_totals(since=since)
    return Window(sessions, _minutes(seconds))


OTHER_LABEL = "other (a client's own code)"


def close_code_rates(*, since: dt.datetime) -> list[CloseCodeRate]:
    """Closed sessions since `since` by close code, with their share of all sessions;
    the codes docs/protocol.md §6 does not document (a client's own) as one row."""
    total, counts = selectors.close_code_counts(since=since)
    grouped: dict[int | str | None, tuple[str, int]] = {}
    for code, n in counts:
        if close_code_group(code) == OTHER:
            n += grouped.get(OTHER, ("", 0))[1]
            grouped[OTHER] = (OTHER_LABEL, n)
        else:
            grouped[code] = (close_code_label(code), n)
    return [
        CloseCodeRate(
            code=code,
            label=label,
            sessions=n,
            percent=round(100 * n / total, 1) if total else 0.0,
        )
        for code, (label, n) in sorted(grouped.items(), key=lambda item: -item[1][1])
    ]


def _midnight(now: dt.datetime) -> dt.datetime:
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


def dashboard() -> Dashboard:
    """Every figure on the admin index."""
    now = timezone.now()
    week_ago = now - dt.timedelta(days=7)
    rates = close_code_rates(since=week_ago)
    errors = sum(r.percent for r in rates if r.code not in (None, CLOSE_NORMAL))
    return Dashboard(
        active_now=selectors.sessions_active_now(),
        today=_window(_midnight(now)),
        last_7_days=_window(week_ago),
        error_percent_7_days=round(errors, 1),
        close_codes=rates,
        top_users=[
            UserUsage(name, n, _minutes(seconds))
            for name, n, seconds in selectors.audio_by_user(since=week_ago)
        ],
        latest_errors=selectors.latest_errors(),
    )


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0 to 100) of `values`; None for none."""
    return _nearest_rank(values, q) if values else None


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str  # the tooltip: what the bar says in words
    css: str = "bar"


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    height: int = HEIGHT
    width: int = WIDTH
    bars: list[Bar] = field(default_factory=list)
    marks: list[Bar] = field(default_factory=list)  # thin ticks: the p95s
    labels: list[Label] = field(default_factory=list)
    empty: str = ""  # said instead of a chart when there is nothing to draw


@dataclass(frozen=True)
class LatencyToday:
    sessions: int
    final_p50: float | None
    final_p95: float | None
    reply_p50: float | None
    reply_p95: float | None


@dataclass(frozen=True)
class Charts:
    latency_today: LatencyToday
    sessions_per_hour: Chart
    latency_per_hour: Chart
    closes_by_code: Chart


def _hours(now: dt.datetime) -> list[dt.datetime]:
    """The last 24 hours, each by its start, the current one last."""
    this_hour = timezone.localtime(now).replace(minute=0, second=0, microsecond=0)
    return [this_hour - dt.timedelta(hours=HOURS - 1 - i) for i in range(HOURS)]


def _hour_axis(hours: list[dt.datetime], top_value: str) -> list[Label]:
    slot = (WIDTH - LEFT - RIGHT) / HOURS
    labels = [
        Label(LEFT + (i + 0.5) * slot, HEIGHT - 6, f"{hour:%H}:00")
        for i, hour in enumerate(hours)
        if i % 6 == 0
    ]
    labels.append(Label(LEFT - 4, TOP + 8, top_value, "end"))
    labels.append(Label(LEFT - 4, HEIGHT - BOTTOM, "0", "end"))
    return labels


def _column(i: int, value: float, top: float, title: str, css: str = "bar") -> Bar:
    slot = (WIDTH - LEFT - RIGHT) / HOURS
    plot = HEIGHT - TOP - BOTTOM
    height = max(plot * value / top, 1.0)
    return Bar(
        round(LEFT + i * slot + slot * 0.1, 1),
        round(HEIGHT - BOTTOM - height, 1),
        round(slot * 0.8, 1),
        round(height, 1),
        title,
        css,
    )


def _key(hour: dt.datetime) -> dt.datetime:
    return hour.astimezone(dt.UTC)


def sessions_per_hour_chart(now: dt.datetime) -> Chart:
    hours = _hours(now)
    per_hour = selectors.sessions_per_hour(since=hours[0])
    counts = {_key(hour): n for hour, n in per_hour.items()}
    top = max(counts.values(), default=0)
    bars = [
        _column(i, n, top, f"{hour:%H}:00: {n} session{'s' if n != 1 else ''}")
        for i, hour in enumerate(hours)
        if (n := counts.get(_key(hour), 0))
    ]
    return Chart(
        "sessions-per-hour",
        "Sessions per hour, last 24 hours",
        bars=bars,
        labels=_hour_axis(hours, str(top)),
        empty="" if bars else "No sessions in the last 24 hours.",
    )


def latency_per_hour_chart(now: dt.datetime) -> Chart:
    """Per hour: a bar to the p50 of the sessions' median final latency, a tick at
    its p95."""
    hours = _hours(now)
    per_hour = selectors.final_latencies_per_hour(since=hours[0])
    by_hour = {_key(hour): values for hour, values in per_hour.items()}
    top = max((max(v) for v in by_hour.values()), default=0.0)
    bars, marks = [], []
    for i, hour in enumerate(hours):
        values = by_hour.get(_key(hour))
        if not values:
            continue
        p50, p95 = _nearest_rank(values, 50), _nearest_rank(values, 95)
        title = (
            f"{hour:%H}:00: p50 {p50:.2f} s, p95 {p95:.2f} s "
            f"({len(values)} session{'s' if len(values) != 1 else ''})"
        )
        bars.append(_column(i, p50, top, title))
        tick = _column(i, p95, top, title, "p95")
        marks.append(Bar(tick.x, tick.y, tick.width, 2.0, title, "p95"))
    return Chart(
        "latency-per-hour",
        "Final latency per hour, last 24 hours (bar p50, tick p95; seconds)",
        bars=bars,
        marks=marks,
        labels=_hour_axis(hours, f"{top:.1f} s"),
        empty="" if bars else "No final latencies in the last 24 hours.",
    )


def closes_by_code_chart(now: dt.datetime) -> Chart:
    """One horizontal bar per close code, last 24 hours."""
    rates = close_code_rates(since=now - dt.timedelta(hours=HOURS))
    row, label_width = 22, 190
    top = max((r.sessions for r in rates), default=0)
    bars, labels = [], []
    for i, rate in enumerate(rates):
        y = TOP + i * row
        length = max((WIDTH - label_width - 50) * rate.sessions / top, 1.0)
        title = f"{rate.label}: {rate.sessions} ({rate.percent} %)"
        css = "bar" if rate.code == CLOSE_NORMAL else "bar error"
        bars.append(Bar(label_width, y, round(length, 1), row - 6, title, css))
        labels.append(Label(label_width - 6, y + row - 10, rate.label, "end"))
        labels.append(
            Label(label_width + length + 6, y + row - 10, str(rate.sessions), "start")
        )
    return Chart(
        "closes-by-code",
        "Closes by code, last 24 hours",
        height=TOP * 2 + row * max(len(rates), 1),
        bars=bars,
        labels=labels,
        empty="" if bars else "No closed sessions in the last 24 hours.",
    )


def latency_today(now: dt.datetime) -> LatencyToday:
    finals, replies = selectors.session_latencies(since=_midnight(now))
    return LatencyToday(
        sessions=len(finals),
        final_p50=percentile(finals, 50),
        final_p95=percentile(finals, 95),
        reply_p50=percentile(replies, 50),
        reply_p95=percentile(replies, 95),
    )


def charts() -> Charts:
    """Every latency figure and chart on the admin index."""
    now = timezone.now()
    return Charts(
        latency_today=latency_today(now),
        sessions_per_hour=sessions_per_hour_chart(now),
        latency_per_hour=latency_per_hour_chart(now),
        closes_by_code=closes_by_code_chart(now),
    )
