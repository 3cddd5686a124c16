"""Writes for what went wrong in a session: one SessionError row each."""

import logging
import uuid

from transcription.models import SessionError

logger = logging.getLogger(__name__)


def session_error_add(
    *, session_id: uuid.UUID, close_code: int | None, kind: str, message: str
) -> SessionError:
    logger.warning(
        "session %s error %s (%s): %s", session_id, kind, close_code, message
    )
    return SessionError.objects.create(
        session_id=session_id, close_code=close_code, kind=kind, message=message
    )
