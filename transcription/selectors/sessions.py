"""Reads for a user's own sessions: history, the latest one, a reply's audio."""

import dataclasses
import uuid
from typing import TYPE_CHECKING

from django.db.models import (
    Max,
    Prefetch,
    Q,
    QuerySet,
)

from transcription.models import (
    VOICE_ERROR_KINDS,
    AudioSession,
    ReceiverBatch,
    SessionError,
    Transcript,
)

if TYPE_CHECKING:
    pass


def session_history(*, user) -> QuerySet[AudioSession]:
    """A user's own sessions, newest first, with finals, replies and errors loaded.

    Sessions refused at connect (bad parameters, capacity) have nothing to read, so
    they are left out. Reply speech is not loaded (`has_audio` says if there is some).
    Batches that failed come with the replies; the voice loop's errors are not
    loaded with the others: the conversation tells them in plain words.
    """
    replies = (
        ReceiverBatch.objects.filter(
            ~Q(reply_text="") | Q(status=ReceiverBatch.Status.FAILED)
        )
        .without_audio()
        .order_by("created_at", "pk")
    )
    return (
        AudioSession.objects.filter(user=user)
        .select_related("token")
        .exclude(status=AudioSession.Status.REJECTED)
        .order_by("-started_at")
        .prefetch_related(
            Prefetch("transcripts", queryset=Transcript.objects.order_by("seq")),
            Prefetch("batches", queryset=replies, to_attr="replies"),
            Prefetch(
                "errors",
                queryset=SessionError.objects.exclude(kind__in=VOICE_ERROR_KINDS),
            ),
        )
    )


def session_latest_in_browser(*, user) -> AudioSession | None:
    """A user's newest session from the browser app (History shows it; None if none)."""
    return (
        AudioSession.objects.filter(user=user, auth_method="session")
        .exclude(status=AudioSession.Status.REJECTED)
        .order_by("-started_at")
        .only("pk")
        .first()
    )


def reply_audio_get_own(*, user, session_id, batch_pk: int) -> bytes | None:
    """A reply's MP3 in one of the user's own sessions; None if none or not theirs."""
    audio = (
        ReceiverBatch.objects.filter(
            pk=batch_pk, session_id=session_id, session__user=user
        )
        .values_list("reply_audio", flat=True)
        .first()
    )
    return bytes(audio) if audio is not None else None


def session_find(*, id_or_prefix: str) -> AudioSession | None:
    """A session by its id or a unique leading part of it (as the admin shows)."""
    value = id_or_prefix.strip().lower()
    try:
        return AudioSession.objects.filter(pk=uuid.UUID(value)).first()
    except ValueError:
        pass
    if len(value) < 4 or any(c not in "0123456789abcdef-" for c in value):
        return None
    found = list(AudioSession.objects.filter(pk__istartswith=value)[:2])
    return found[0] if len(found) == 1 else None


@dataclasses.dataclass(frozen=True, slots=True)
class StoredSession:
    """What a resume on another server reads of a session (`session_stored`)."""

    session: AudioSession
    finals: int  # the last final's seq
    last_seq: int  # the last message seq stored (finals and replies)
    replay_finals: list[Transcript]  # sent after the client's seq, in order
    replay_replies: list[ReceiverBatch]  # replies sent after the client's seq
    unsent: list[str]  # batch ids whose reply was not sent (pending, or never)
    finalized_seconds: float  # the engine's end time of the last final (0: none)


def session_stored(*, session_id: uuid.UUID, after: int) -> StoredSession | None:
    """A session's row and what a resume after message `after` replays."""
    session = AudioSession.objects.filter(pk=session_id).first()
    if session is None:
        return None
    transcripts = session.transcripts.all()
    batches = session.batches.all()
    stats = transcripts.aggregate(
        finals=Max("seq"), seq=Max("message_seq"), end=Max("end_seconds")
    )
    replies = batches.aggregate(seq=Max("reply_seq"))
    return StoredSession(
        session=session,
        finals=stats["finals"] or 0,
        last_seq=max(stats["seq"] or 0, replies["seq"] or 0),
        replay_finals=list(transcripts.filter(message_seq__gt=after)),
        replay_replies=list(batches.filter(reply_seq__gt=after)),
        unsent=[
            str(batch_id)
            for batch_id in batches.filter(reply_seq__isnull=True).values_list(
                "batch_id", flat=True
            )
        ],
        finalized_seconds=stats["end"] or 0.0,
    )
