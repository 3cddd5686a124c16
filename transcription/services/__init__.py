"""Writes, by subject: `sessions` (a record), `errors`, `batches` (the queue).

Callers use `services.<name>`; each name lives in its subject's module.
"""

from transcription.services.batches import (
    batch_claim,
    batch_flush,
    batch_interrupt,
    batch_join,
    batch_record_failure,
    batch_record_reply,
    batch_release,
    batch_retry_delay,
    batches_give_up_exhausted,
    worker_heartbeat,
)
from transcription.services.errors import session_error_add
from transcription.services.sessions import (
    batch_reply_numbered,
    session_end,
    session_heartbeat,
    session_language_identified,
    session_reject,
    session_release,
    session_start,
    session_take_over,
    sessions_close_abandoned,
    sessions_purge,
    transcript_add_final,
)

__all__ = [
    "batch_claim",
    "batch_flush",
    "batch_interrupt",
    "batch_join",
    "batch_record_failure",
    "batch_record_reply",
    "batch_release",
    "batch_reply_numbered",
    "batch_retry_delay",
    "batches_give_up_exhausted",
    "session_end",
    "session_error_add",
    "session_heartbeat",
    "session_language_identified",
    "session_reject",
    "session_release",
    "session_start",
    "session_take_over",
    "sessions_close_abandoned",
    "sessions_purge",
    "transcript_add_final",
    "worker_heartbeat",
]
