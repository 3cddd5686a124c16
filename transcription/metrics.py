"""The speech platform's Prometheus series (docs/operations.md; the scrape: operations).

With PROMETHEUS_MULTIPROC_DIR set (by `make run`, the units, the tests' servers:
the environment, never a setting) every process of the host writes its figures to
files there and a scrape of any daphne process adds them up. The directory is wiped
once when the host's services start, never by a process; each process marks itself
dead at exit (its live gauges leave the sum, its counters stay). Without it, a
process serves its own figures (tests, a single process).

Nothing here is called per audio frame: sessions are counted when they end, finals
and latencies as they happen.
"""

from __future__ import annotations

import atexit
import logging
import os

from prometheus_client import Counter, Gauge, Histogram, multiprocess

from transcription.close_codes import close_code_group

logger = logging.getLogger(__name__)


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
READING_PAUSED = Gauge(
    "voiceproject_reading_paused",
    "WebSocket connections whose socket is not read now: what they sent waits for "
    "their session, which waits for its engine (flow control).",
    multiprocess_mode="livesum",
)
DECODER_THREADS = Gauge(
    "voiceproject_decoder_threads",
    "Container streams (webm, ogg-opus, mp4, flac) decoding now, a thread each "
    "(a host's processes added up; MAX_DECODER_THREADS per process).",
    multiprocess_mode="livesum",
)
DECODERS_REFUSED = Counter(
    "voiceproject_decoders_refused",
    "Container-stream sessions refused (1013) because their process already ran "
    "MAX_DECODER_THREADS decoders.",
)
OUTBOUND_OVERFLOWS = Counter(
    "voiceproject_outbound_overflows",
    "WebSocket connections dropped because more than MAX_OUTBOUND_BYTES waited to be "
    "sent to them (a client that does not read).",
)
SESSIONS = Counter(
    "voiceproject_sessions",
    "Sessions ended (refused ones included), by close code (a client's own code "
    "outside docs/protocol.md §6: other) and engine.",
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
READY_CHECK_FAILURES = Counter(
    "voiceproject_ready_check_failures",
    "Readiness checks (/readyz) that failed, by check: its dependency down or slow.",
    ["check"],
)
CHANNEL_LAYER_ERRORS = Counter(
    "voiceproject_channel_layer_errors",
    "Channel-layer (Redis) calls that failed, by operation (sessions go on).",
    ["operation"],
)
AUTH_REFUSED = Counter(
    "voiceproject_auth_refused",
    "WebSocket connections refused before authentication (never stored), by reason: "
    "missing_token, bad_token, bad_origin, throttled (a failure over the limit), "
    "unknown_path (a path that is no endpoint: refused before any lookup).",
    ["reason"],
)
RESUMES = Counter(
    "voiceproject_resumes",
    "Resumes of resumable sessions by outcome: same_server, handed_over (from a "
    "live server), taken_over (from a dead one), busy (not handed over: 1013), "
    "refused (any other refusal).",
    ["outcome"],
)
LANGUAGES_IDENTIFIED = Counter(
    "voiceproject_languages_identified",
    "language=auto sessions by the language their speech was identified as (one of "
    "the engine's codes), and whether Whisper was sure (probability at least 0.5).",
    ["language", "sure"],
)
TOKEN_LOOKUPS = Counter(
    "voiceproject_token_lookups",
    "Database lookups of WebSocket tokens: authenticate (one attempt within the "
    "failed-attempt limit, or a token that matched), probe (one batch of attempts "
    "over it).",
    ["kind"],
)


def session_ended(*, close_code: int | None, engine: str, audio_seconds: float) -> None:
    """Count one session as it ends (or is refused)."""
    SESSIONS.labels(close_code=close_code_group(close_code), engine=engine).inc()
    if audio_seconds > 0:
        AUDIO_SECONDS.inc(audio_seconds)
