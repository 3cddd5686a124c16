"""Batches: every final in exactly one batch, safe claims, retries, several workers."""

import asyncio
import datetime as dt
import socket
import struct
import sys

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.utils import timezone

from tests.helpers import eventually
from tests.transcription.voice_fakes import TcpReceiver
from transcription import selectors, services
from transcription.engines import TranscriptEvent
from transcription.models import AudioSession, ReceiverBatch, SessionError
from transcription.voice_loop.receiver import exchange_budget
from transcription.voice_loop.worker import BatchWorker, lease_seconds

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
    settings.TTS_ENGINE = "tests.transcription.voice_fakes.BrokenSpeech"
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


@pytest.mark.django_db
def test_a_claim_that_never_finishes_is_failed_after_the_last_attempt(settings):
    settings.RECEIVER_MAX_ATTEMPTS = 2
    batch = _final(_session(), 1, silence=0).batch
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for worker in ("w1", "w2"):  # each dies mid-exchange: its lease runs out
            assert _claim(batch, worker, lease=60) is True
            assert services.batches_give_up_exhausted() == []
            clock.shift(61)
        assert _claim(batch, "w3") is False
        assert selectors.batches_due(limit=10) == []
        assert [b.pk for b in services.batches_give_up_exhausted()] == [batch.pk]
    batch.refresh_from_db()
    assert (batch.status, batch.attempts) == ("failed", 2)
    assert "the last one never finished" in batch.last_error
    [error] = SessionError.objects.filter(session_id=batch.session_id)
    assert error.kind == "receiver"
    assert "attempt 2 (gave up)" in error.message
    assert services.batches_give_up_exhausted() == []  # once


@pytest.mark.django_db
def test_a_live_claim_on_its_last_attempt_is_left_alone(settings):
    settings.RECEIVER_MAX_ATTEMPTS = 1
    batch = _final(_session(), 1, silence=0).batch
    assert _claim(batch, "w1", lease=60) is True
    assert services.batches_give_up_exhausted() == []
    reply = {"reply": "hi", "audio": None, "tts_engine": "x", "tts_error": ""}
    done = services.batch_record_reply(batch_pk=batch.pk, worker_id="w1", **reply)
    assert done.status == "delivered"


async def _run_worker_until(check, seconds: float = 20) -> None:
    worker = asyncio.create_task(BatchWorker("w1", concurrency=2).run())
    try:
        await eventually(check, seconds=seconds)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


@pytest.mark.django_db(transaction=True)
async def test_a_worker_fails_a_batch_whose_worker_died_on_its_last_attempt(settings):
    settings.RECEIVER_MAX_ATTEMPTS = 3
    receiver = await TcpReceiver().start()
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port

    def dead_claim():
        batch = _final(_session(), 1, silence=0).batch
        ReceiverBatch.objects.filter(pk=batch.pk).update(
            status="claimed",
            claimed_by="gone",
            attempts=3,
            claimed_until=timezone.now() - dt.timedelta(seconds=1),
        )
        return batch

    batch = await sync_to_async(dead_claim)()
    try:
        await _run_worker_until(
            lambda: ReceiverBatch.objects.filter(pk=batch.pk, status="failed").exists()
        )
    finally:
        await receiver.stop()
    assert receiver.documents == []
    assert await sync_to_async(
        SessionError.objects.filter(session_id=batch.session_id, kind="receiver").exists
    )()


@pytest.mark.django_db(transaction=True)
async def test_an_attempt_that_raises_counts_and_the_batch_ends_failed(settings):
    # Not a ReceiverError: asyncio refuses a port out of range with OverflowError.
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", 70000
    settings.RECEIVER_MAX_ATTEMPTS = 3
    settings.RECEIVER_RETRY_SECONDS = 0.01
    batch = await sync_to_async(lambda: _final(_session(), 1, silence=0).batch)()
    await _run_worker_until(
        lambda: ReceiverBatch.objects.filter(pk=batch.pk, status="failed").exists()
    )
    await sync_to_async(batch.refresh_from_db)()
    assert batch.attempts == 3
    assert batch.last_error == "Delivery failed unexpectedly (OverflowError)."
    messages = await sync_to_async(list)(
        SessionError.objects.filter(session_id=batch.session_id).values_list(
            "message", flat=True
        )
    )
    assert len(messages) == 2
    assert "attempt 3 (gave up)" in messages[-1]


def _reset_after_reading(reader, writer):
    """A receiver that dies mid-exchange: it reads part of the document, then the
    connection is reset (SO_LINGER 0: RST, no reply, no clean end)."""

    async def handle():
        await reader.read(8)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handle()


@pytest.mark.django_db(transaction=True)
async def test_chaos_a_receiver_that_keeps_dying_fails_the_batch(settings):
    server = await asyncio.start_server(_reset_after_reading, "127.0.0.1", 0)
    settings.RECEIVER_HOST = "127.0.0.1"
    settings.RECEIVER_PORT = server.sockets[0].getsockname()[1]
    settings.RECEIVER_MAX_ATTEMPTS = 3
    settings.RECEIVER_RETRY_SECONDS = 0.01
    batch = await sync_to_async(lambda: _final(_session(), 1, silence=0).batch)()
    try:
        await _run_worker_until(
            lambda: ReceiverBatch.objects.filter(pk=batch.pk, status="failed").exists()
        )
    finally:
        server.close()
        await server.wait_closed()
    await sync_to_async(batch.refresh_from_db)()
    assert batch.attempts == 3
    assert "dropped the connection" in batch.last_error
    errors = await sync_to_async(list)(
        SessionError.objects.filter(session_id=batch.session_id).values_list(
            "message", flat=True
        )
    )
    assert len(errors) == 2
    assert "attempt 1 (retrying)" in errors[0]
    assert "attempt 3 (gave up)" in errors[1]


# A receiver in its own process: it reads a few bytes of the document, says so, and
# waits to be killed (the kernel then resets the connection: unread data).
DYING_RECEIVER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.recv(8)
print("reading", flush=True)
time.sleep(60)
"""


@pytest.mark.django_db(transaction=True)
async def test_chaos_a_receiver_killed_mid_exchange_gets_the_batch_when_back(settings):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DYING_RECEIVER, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), 10))
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", port
    settings.RECEIVER_MAX_ATTEMPTS = 30
    settings.RECEIVER_RETRY_SECONDS = 0.05
    batch = await sync_to_async(lambda: _final(_session(), 1, silence=0).batch)()
    worker = asyncio.create_task(BatchWorker("w1", concurrency=2).run())
    back = TcpReceiver()
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"reading\n"
        process.kill()
        await process.wait()
        await eventually(
            lambda: ReceiverBatch.objects.filter(pk=batch.pk, attempts__gte=2).exists()
        )
        await back.start(port=port)  # the receiver comes back on its port
        await eventually(
            lambda: ReceiverBatch.objects.filter(
                pk=batch.pk, status="delivered"
            ).exists()
        )
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await back.stop()
        if process.returncode is None:
            process.kill()
            await process.wait()
    await sync_to_async(batch.refresh_from_db)()
    assert batch.reply_text == "You said final 1"
    assert [d["batch_id"] for d in back.documents] == [str(batch.batch_id)]
    [error] = await sync_to_async(list)(
        SessionError.objects.filter(session_id=batch.session_id)
    )
    assert error.kind == "receiver"
    assert "attempt 1 (retrying)" in error.message
    assert "dropped the connection" in error.message


def test_a_claim_outlasts_one_exchange_and_the_consumer_waits_for_one(settings):
    settings.RECEIVER_TIMEOUT, settings.TTS_TIMEOUT = 7.0, 11.0
    assert exchange_budget() == 18.0
    assert lease_seconds() == exchange_budget() + 30  # slack: the worker's own work
