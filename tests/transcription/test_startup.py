"""What a server process starts at its first connection."""

import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from transcription import startup, worker
from transcription.engines import get_engine
from transcription.engines.offline_worker import stats
from transcription.models import AudioSession, SessionError

pytestmark = pytest.mark.django_db(transaction=True)


async def _app(scope, receive, send):
    return None


async def _first_connections(app, count=2):
    for _ in range(count):
        await app({"type": "http"}, None, None)
    await asyncio.gather(*startup._tasks)


async def test_offline_decoders_start_before_the_first_session(settings):
    settings.TRANSCRIPTION_ENGINE = "pocketsphinx"
    settings.OFFLINE_DECODER_PROCESSES = 2
    pool = get_engine().pool
    pool.shutdown()
    await _first_connections(startup.StartOnFirstConnection(_app))
    assert len(pool.workers) == 2
    pids = set()
    for pool_worker in pool.workers:
        held = await asyncio.wrap_future(pool_worker.executor.submit(stats))
        assert held["idle_decoders"] >= 1  # built while nobody was waiting
        pids.add(held["pid"])
    assert len(pids) == 2


async def test_batch_worker_starts_without_waiting_for_a_session(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"
    settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", 9
    settings.VOICE_WORKER_IN_PROCESS = True
    await worker.stop_in_process()
    try:
        await _first_connections(startup.StartOnFirstConnection(_app))
        assert worker._runner is not None
        assert not worker._runner.task.done()
    finally:
        await worker.stop_in_process()


async def test_nothing_starts_without_a_receiver_or_warm_up(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"
    settings.RECEIVER_HOST = settings.RECEIVER_URL = ""
    await worker.stop_in_process()
    await _first_connections(startup.StartOnFirstConnection(_app))
    assert worker._runner is None


async def test_sessions_left_open_by_a_stopped_server_are_closed(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"

    def make():
        long_ago = timezone.now() - dt.timedelta(minutes=10)
        stale = AudioSession.objects.create(engine="echo", heartbeat_at=long_ago)
        live = AudioSession.objects.create(engine="echo")
        return stale, live

    stale, live = await sync_to_async(make)()
    await _first_connections(startup.StartOnFirstConnection(_app))
    await sync_to_async(stale.refresh_from_db)()
    await sync_to_async(live.refresh_from_db)()
    assert stale.status == "failed"
    assert stale.ended_at == stale.heartbeat_at
    assert live.status == "active"
    kinds = await sync_to_async(list)(
        SessionError.objects.values_list("session_id", "kind")
    )
    assert kinds == [(stale.pk, "abandoned")]
