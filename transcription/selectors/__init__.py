"""Reads, by subject: `access`, `sessions`, `dashboard` and `batches`.

Callers use `selectors.<name>`; each name lives in its subject's module.
"""

from transcription.selectors.access import (
    AccessEnded,
    grants_revoked,
    token_active_session_count,
    user_active_session_count,
)
from transcription.selectors.batches import (
    batch_delivery,
    batch_document,
    batch_interrupted,
    batch_next_due_at,
    batch_outcomes,
    batches_due,
    batches_due_summary,
    worker_last_seen,
)
from transcription.selectors.dashboard import (
    SessionCounts,
    audio_by_user,
    close_code_counts,
    final_latencies_per_hour,
    latest_errors,
    session_latencies,
    session_list_with_counts,
    session_totals,
    sessions_active_now,
    sessions_per_hour,
)
from transcription.selectors.sessions import (
    reply_audio_get_own,
    session_find,
    session_history,
    session_latest_in_browser,
    session_stored,
)

__all__ = [
    "AccessEnded",
    "SessionCounts",
    "audio_by_user",
    "batch_delivery",
    "batch_document",
    "batch_interrupted",
    "batch_next_due_at",
    "batch_outcomes",
    "batches_due",
    "batches_due_summary",
    "close_code_counts",
    "final_latencies_per_hour",
    "grants_revoked",
    "latest_errors",
    "reply_audio_get_own",
    "session_find",
    "session_history",
    "session_latencies",
    "session_latest_in_browser",
    "session_list_with_counts",
    "session_stored",
    "session_totals",
    "sessions_active_now",
    "sessions_per_hour",
    "token_active_session_count",
    "user_active_session_count",
    "worker_last_seen",
]
