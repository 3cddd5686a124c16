"""Records of audio sessions, their final transcripts, receiver batches and errors."""

import datetime as dt
import uuid

from django.conf import settings
from django.db import models
from django.db.models import ExpressionWrapper, Q
from django.utils import timezone

# A live session's consumer touches its record this often; a record that has not been
# touched for STALE_AFTER_SECONDS belongs to a server that stopped without closing it.
HEARTBEAT_SECONDS = 60
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
# A batch worker records that it polls this often (at most); /readyz wants one seen
# within WORKER_SEEN_SECONDS.
WORKER_HEARTBEAT_SECONDS = 10
WORKER_SEEN_SECONDS = 60


class AudioSessionQuerySet(models.QuerySet):
    def live(self) -> "AudioSessionQuerySet":
        """Active sessions whose server still answers for them (recent heartbeat)."""
        since = timezone.now() - dt.timedelta(seconds=STALE_AFTER_SECONDS)
        return self.filter(status=AudioSession.Status.ACTIVE, heartbeat_at__gte=since)

    def abandoned(self) -> "AudioSessionQuerySet":
        """Active on paper, but no server has touched them for a while."""
        since = timezone.now() - dt.timedelta(seconds=STALE_AFTER_SECONDS)
        return self.filter(status=AudioSession.Status.ACTIVE, heartbeat_at__lt=since)


class AudioSession(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        REJECTED = "rejected", "rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audio_sessions",
    )
    token = models.ForeignKey(
        "accounts.ApiToken",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audio_sessions",
    )
    auth_method = models.CharField(max_length=16, blank=True)
    engine = models.CharField(max_length=200)
    language = models.CharField(max_length=16, blank=True)  # as asked: may be auto
    # language=auto: the language its speech was identified as, and how sure.
    detected_language = models.CharField(max_length=16, blank=True)
    language_probability = models.FloatField(null=True, blank=True)
    encoding = models.CharField(max_length=16, blank=True)
    sample_rate = models.PositiveIntegerField(null=True, blank=True)
    send_partials = models.BooleanField(default=True)
    parameters = models.JSONField(default=dict, blank=True)
    client = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True
    )
    close_code = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    close_reason = models.CharField(max_length=200, blank=True)
    audio_bytes = models.BigIntegerField(default=0)
    audio_seconds = models.FloatField(default=0.0)
    # The server process that serves the session: a starting server closes at once the
    # sessions of processes that are gone.
    server_host = models.CharField(max_length=255, blank=True)
    server_pid = models.PositiveIntegerField(null=True, blank=True)
    server_started_at = models.DateTimeField(null=True, blank=True)
    # Its server let go of it while shutting down (a resumable session, closed 1001):
    # any server may take it over at once, without waiting for that one to exit.
    released_at = models.DateTimeField(null=True, blank=True)
    # Latencies, stored once per session (seconds): audio start → first partial; end of
    # an utterance's audio → its final; last final of a batch → its reply sent.
    first_partial_seconds = models.FloatField(null=True, blank=True)
    final_latency_p50 = models.FloatField(null=True, blank=True)
    final_latency_max = models.FloatField(null=True, blank=True)
    reply_latency_p50 = models.FloatField(null=True, blank=True)
    reply_latency_max = models.FloatField(null=True, blank=True)

    objects = AudioSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["token", "status"])]

    def __str__(self) -> str:
        who = self.user.get_username() if self.user else "anonymous"
        return f"{who} {self.started_at:%Y-%m-%d %H:%M:%S} ({self.status})"

    @property
    def spoken_language(self) -> str:
        """The language spoken: the one identified (language=auto), else the one
        asked for; en-US when auto identified none (yet)."""
        if self.detected_language:
            return self.detected_language
        if self.language and self.language != "auto":
            return self.language
        return "en-US"

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class Transcript(models.Model):
    """One final transcript, stored the moment the engine delivers it."""

    session = models.ForeignKey(
        AudioSession, on_delete=models.CASCADE, related_name="transcripts"
    )
    seq = models.PositiveIntegerField()
    text = models.TextField()
    start_seconds = models.FloatField(null=True, blank=True)
    end_seconds = models.FloatField(null=True, blank=True)
    result_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The `seq` it was sent with in a resumable session (what a resume replays).
    message_seq = models.PositiveIntegerField(null=True, blank=True)
    # With a receiver configured, every final joins exactly one batch as it is stored.
    batch = models.ForeignKey(
        "ReceiverBatch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="transcripts",
    )

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="transcript_seq")
        ]

    def __str__(self) -> str:
        return self.text[:80]


# SessionError kinds of the voice loop: the batches tell them (in plain words to users).
VOICE_ERROR_KINDS = ("receiver", "tts")


class SessionError(models.Model):
    session = models.ForeignKey(
        AudioSession, on_delete=models.CASCADE, related_name="errors"
    )
    close_code = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=32)
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:80]}"


class ReceiverBatchQuerySet(models.QuerySet):
    def claimable(self, now: dt.datetime) -> "ReceiverBatchQuerySet":
        """Batches a worker may claim: due ones, and claims whose lease ran out (their
        worker died), while attempts are left. The one home of that rule."""
        Status = ReceiverBatch.Status
        return self.filter(
            Q(status__in=[Status.OPEN, Status.PENDING], due_at__lte=now)
            | Q(status=Status.CLAIMED, claimed_until__lt=now),
            attempts__lt=settings.RECEIVER_MAX_ATTEMPTS,
        )

    def exhausted(self, now: dt.datetime) -> "ReceiverBatchQuerySet":
        """Batches no worker may claim again but none will finish: every attempt used,
        the last one interrupted (its lease ran out), or RECEIVER_MAX_ATTEMPTS
        lowered."""
        Status = ReceiverBatch.Status
        return self.filter(
            Q(status=Status.PENDING) | Q(status=Status.CLAIMED, claimed_until__lt=now),
            attempts__gte=settings.RECEIVER_MAX_ATTEMPTS,
        )

    def without_audio(self) -> "ReceiverBatchQuerySet":
        """The reply speech left unloaded; `has_audio` says whether there is some."""
        return self.defer("reply_audio").annotate(
            has_audio=ExpressionWrapper(
                Q(reply_audio__isnull=False), output_field=models.BooleanField()
            )
        )


class ReceiverBatch(models.Model):
    """Finals of a session sent together to the receiver, with its reply.

    The batch path: docs/protocol.md §9.

    Life: `open` while finals join (due when SILENCE_SECONDS pass without one),
    `claimed` by one worker at a time (a lease), `pending` between retries,
    then `delivered` (reply and speech stored) or `failed` (gave up).
    """

    class Status(models.TextChoices):
        OPEN = "open", "open"
        PENDING = "pending", "pending retry"
        CLAIMED = "claimed", "claimed"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    class TtsStatus(models.TextChoices):
        NONE = "", "-"
        OK = "ok", "ok"
        FAILED = "failed", "failed"

    batch_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    session = models.ForeignKey(
        AudioSession, on_delete=models.CASCADE, related_name="batches"
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True
    )
    due_at = models.DateTimeField(help_text="When a worker should take it next.")
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    reply_text = models.TextField(blank=True)
    reply_audio = models.BinaryField(null=True, blank=True)
    tts_engine = models.CharField(max_length=200, blank=True)
    tts_status = models.CharField(
        max_length=8, choices=TtsStatus.choices, default=TtsStatus.NONE, blank=True
    )
    tts_error = models.TextField(blank=True)
    # The `seq` its reply was sent with in a resumable session (what a resume replays).
    reply_seq = models.PositiveIntegerField(null=True, blank=True)
    # Barge-in (docs/protocol.md §11): the person spoke again while the reply was
    # prepared or streamed; the rest of it was not sent. `reply_sent`: what was.
    interrupted_at = models.DateTimeField(null=True, blank=True)
    reply_sent = models.TextField(blank=True)

    objects = ReceiverBatchQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["status", "due_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["session"],
                condition=models.Q(status="open"),
                name="one_open_batch_per_session",
            )
        ]
        verbose_name = "receiver batch"
        verbose_name_plural = "receiver batches"

    def __str__(self) -> str:
        return f"batch {self.batch_id} ({self.status})"


class WorkerHeartbeat(models.Model):
    """When each batch worker last polled for due batches (at most every
    WORKER_HEARTBEAT_SECONDS): /readyz wants one seen within the last minute."""

    worker_id = models.CharField(max_length=100, primary_key=True)
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.worker_id} at {self.seen_at:%Y-%m-%d %H:%M:%S}"
