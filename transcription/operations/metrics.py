"""Prometheus series of the speech platform, and their exposition (SPEC §11).

With PROMETHEUS_MULTIPROC_DIR set (by `make run`, the units, the tests' servers:
the environment, never a setting) every process of the host writes its figures to
files there and a scrape of any daphne process adds them up. The directory is wiped
once when the host's services start, never by a process; each process marks itself
dead at exit (its live gauges leave the sum, its counters stay). Without it, a
process serves its own figures (tests, a single process).

Nothing here is called per audio frame: sessions are counted when they end, finals
and latencies as they happen. Figures that live in the database (due batches) are
read by a collector at scrape time.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator

from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def _mark_dead(pid: int) -> None:
    # A forked child inherits this hook: only the process that registered it counts.
    if os.getpid() == pid:
        multiprocess.mark_process_dead(pid)


if multiprocess_dir():
    # Before the first series: each writes its file there as it is created.
    os.makedirs(multiprocess_dir(), exist_ok=True)
    atexit.register(_mark_dead, os.getpid())

ACTIVE_SESSIONS = Gauge(
    "voiceproject_active_sessions",
    "WebSocket sessions open now (a host's processes added up).",
    multiprocess_mode="livesum",
)
SESSIONS = Counter(
    "voiceproject_sessions",
    "Sessions ended (refused ones included), by close code and engine.",
    ["close_code", "engine"],
)
AUDIO_SECONDS = Counter(
    "voiceproject_audio_seconds",
    "Seconds of PCM audio received, counted when each session ends.",
)
FINALS = Counter("voiceproject_finals", "Final transcripts sent.")
FIRST_PARTIAL_SECONDS = Histogram(
    "voiceproject_first_partial_seconds",
    "Seconds from a session's first audio to its first transcript event.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
FINAL_LATENCY_SECONDS = Histogram(
    "voiceproject_final_latency_seconds",
    "Seconds from receiving the end of an utterance's audio to sending its final.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)
REPLY_LATENCY_SECONDS = Histogram(
    "voiceproject_reply_latency_seconds",
    "Seconds from the last final of a batch to its server_response sent.",
    buckets=(0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 30, 60),
)
RECEIVER_FAILURES = Counter(
    "voiceproject_receiver_failures",
    "Failed receiver exchanges (every failed attempt).",
)
TTS_FAILURES = Counter(
    "voiceproject_tts_failures", "Replies sent without speech (TTS failed)."
)
AUTH_THROTTLED = Counter(
    "voiceproject_auth_throttled",
    "WebSocket token attempts refused because their address failed too often.",
)


class DueBatchesCollector(Collector):
    """Batches waiting for a worker, read from the database at scrape time."""

    def describe(self) -> list[Metric]:
        return []  # never a query at registration

    def collect(self) -> Iterator[Metric]:
        from transcription import selectors  # the ORM, only when scraped

        try:
            count, oldest = selectors.batches_due_summary(now=timezone.now())
        except Exception:
            logger.warning("metrics: due batches not read", exc_info=True)
            return
        yield GaugeMetricFamily(
            "voiceproject_batches_due",
            "Receiver batches due now and not yet taken by a worker.",
            value=count,
        )
        yield GaugeMetricFamily(
            "voiceproject_oldest_due_batch_seconds",
            "How long the oldest due batch has waited (0: none).",
            value=oldest,
        )


class _ThisProcess(Collector):
    """The process's own registry, when there is no multiprocess directory."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition() -> bytes:
    """The text a scrape gets: the host's series (or this process's) and the
    database's figures."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(DueBatchesCollector())
    return generate_latest(registry)


def session_ended(*, close_code: int | None, engine: str, audio_seconds: float) -> None:
    """Count one session as it ends (or is refused)."""
    SESSIONS.labels(close_code=str(close_code or ""), engine=engine).inc()
    if audio_seconds > 0:
        AUDIO_SECONDS.inc(audio_seconds)
