"""Batches: every final in exactly one batch, safe claims, retries, several workers."""

import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from tests.transcription.voice_fakes import TcpReceiver, eventually
from transcription import services
from transcription.engines import TranscriptEvent
from transcription.models import AudioSession, ReceiverBatch, SessionError
from transcription.worker import BatchWorker

pytestmark = pytest.mark.services  # the claims matter most on PostgreSQL


def _session() -> AudioSession:
    return services.session_start(
        user=None, token=None, auth_method="", engine="test", params=None
    )


def _final(session, seq, silence=60.0):
    return services.transcript_add_final(
        session_id=session.pk,
        seq=seq,
        event=TranscriptEvent(text=f"final {seq}", is_partial=False),
        audio_bytes=0,
        bytes_per_second=None,
        silence_seconds=silence,
    )


def _claim(batch, worker="w1", lease=60.0):
    return services.batch_claim(
        batch_pk=batch.pk, worker_id=worker, lease_seconds=lease
    )


@pytest.mark.django_db
def test_finals_join_the_open_batch_and_push_its_due_time():
    session = _session()
    first = _final(session, 1)
    due = ReceiverBatch.objects.get().due_at
    second = _final(session, 2)
    batch = ReceiverBatch.objects.get()
    assert first.batch_id == second.batch_id == batch.pk
    assert batch.due_at > due
    assert batch.status == "open"


@pytest.mark.django_db
def test_a_batch_is_claimed_once_and_later_finals_start_a_new_one():
    session = _session()
    batch = _final(session, 1, silence=0).batch
    assert _claim(batch, "w1") is True
    assert _claim(batch, "w2") is False
    later = _final(session, 2)
    assert later.batch_id != batch.pk
    assert list(batch.transcripts.values_list("seq", flat=True)) == [1]
    assert ReceiverBatch.objects.filter(status="open").count() == 1


@pytest.mark.django_db
def test_a_batch_in_its_silence_is_not_claimed():
    batch = _final(_session(), 1, silence=60).batch
    assert _claim(batch) is False
    services.batch_flush(session_id=batch.session_id)
    assert _claim(batch) is True


@pytest.mark.django_db
def test_an_expired_lease_is_taken_over_and_the_old_worker_loses_it():
    batch = _final(_session(), 1, silence=0).batch
    assert _claim(batch, "w1") is True
    ReceiverBatch.objects.filter(pk=batch.pk).update(
        claimed_until=timezone.now() - dt.timedelta(seconds=1)
    )
    assert _claim(batch, "w2") is True
    reply = {"reply": "hi", "audio": None, "tts_engine": "x", "tts_error": ""}
    assert (
        services.batch_record_reply(batch_pk=batch.pk, worker_id="w1", **reply) is None
    )
    done = services.batch_record_reply(batch_pk=batch.pk, worker_id="w2", **reply)
    assert (done.status, done.attempts, done.reply_text) == ("delivered", 2, "hi")


@pytest.mark.django_db
def test_failures_back_off_then_give_up(settings):
    settings.RECEIVER_RETRY_SECONDS = 1.0
    settings.RECEIVER_MAX_ATTEMPTS = 3
    assert [services.batch_retry_delay(n) for n in (1, 2, 3, 8)] == [1, 2, 4, 60]
    batch = _final(_session(), 1, silence=0).batch
    statuses = []
    for _ in range(3):
        ReceiverBatch.objects.filter(pk=batch.pk).update(due_at=timezone.now())
        assert _claim(batch)
        failed = services.batch_record_failure(
            batch_pk=batch.pk, worker_id="w1", message="refused", retry=True
        )
        statuses.append(failed.status)
    assert statuses == ["pending", "pending", "failed"]
    errors = list(SessionError.objects.values_list("message", flat=True))
    assert len(errors) == 2  # the first failure and the giving up, not every retry
    assert "attempt 1 (retrying)" in errors[0]
    assert "attempt 3 (gave up)" in errors[1]


@pytest.mark.django_db(transaction=True)
async def test_several_workers_deliver_each_batch_exactly_once(settings):
    settings.TTS_ENGINE = "tests.transcription.test_voice_loop.BrokenSpeech"
    receiver = await TcpReceiver().start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port

    def make_batches():
        for _ in range(24):
            _final(_session(), 1, silence=0)

    await sync_to_async(make_batches)()
    workers = [BatchWorker(f"w{n}", concurrency=4) for n in range(3)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await eventually(
            lambda: ReceiverBatch.objects.filter(status="delivered").count() == 24,
            seconds=30,
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await receiver.stop()
    ids = [d["batch_id"] for d in receiver.documents]
    assert len(ids) == len(set(ids)) == 24
    claimed_by = await sync_to_async(set)(
        ReceiverBatch.objects.values_list("claimed_by", flat=True)
    )
    assert claimed_by <= {"w0", "w1", "w2"}
    assert await sync_to_async(ReceiverBatch.objects.exclude(attempts=1).count)() == 0
