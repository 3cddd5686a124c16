"""What a server process starts at its first connection."""

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from transcription import server_process
from transcription.engines import get_engine
from transcription.engines.pocketsphinx_worker import stats
from transcription.models import HEARTBEAT_SECONDS, AudioSession, SessionError
from transcription.runtime import startup, worker_runner

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
    await worker_runner.stop_in_process()
    try:
        await _first_connections(startup.StartOnFirstConnection(_app))
        assert worker_runner._runner is not None
        assert not worker_runner._runner.task.done()
    finally:
        await worker_runner.stop_in_process()


async def test_nothing_starts_without_a_receiver_or_warm_up(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"
    settings.RECEIVER_HOST = settings.RECEIVER_URL = ""
    await worker_runner.stop_in_process()
    await _first_connections(startup.StartOnFirstConnection(_app))
    assert worker_runner._runner is None


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


def _gone_pid() -> int:
    """The pid of a process that has just exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_sessions_of_this_hosts_gone_processes_are_closed_whatever_the_heartbeat(
    settings,
):
    """A fresh heartbeat does not save a session whose process is gone (its pid does
    not run, or runs with another start time); other hosts keep the heartbeat rule."""
    settings.TRANSCRIPTION_ENGINE = "echo"
    here = server_process.HOST
    parent = os.getppid()
    parent_started = server_process.started_at(parent)
    assert parent_started is not None

    def make():
        def session(**server):
            return AudioSession.objects.create(engine="echo", **server)

        return {
            "dead pid": session(
                server_host=here, server_pid=_gone_pid(), server_started_at=None
            ),
            "reused pid": session(
                server_host=here,
                server_pid=parent,
                server_started_at=parent_started - dt.timedelta(hours=1),
            ),
            "alive": session(
                server_host=here, server_pid=parent, server_started_at=parent_started
            ),
            "this process": session(**server_process.current()),
            "other host": session(
                server_host="elsewhere", server_pid=_gone_pid(), server_started_at=None
            ),
        }

    sessions = await sync_to_async(make)()
    await _first_connections(startup.StartOnFirstConnection(_app))

    def statuses():
        return {
            name: AudioSession.objects.get(pk=s.pk).status
            for name, s in sessions.items()
        }

    assert await sync_to_async(statuses)() == {
        "dead pid": "failed",
        "reused pid": "failed",
        "alive": "active",
        "this process": "active",
        "other host": "active",
    }


async def test_a_session_records_the_process_that_serves_it(
    connect, api_token, echo_engine
):
    communicator = await connect(token=api_token[1])
    await communicator.send_to(text_data="END_OF_STREAM")
    await communicator.receive_output(10)
    session = await sync_to_async(AudioSession.objects.get)()
    assert session.server_host == socket.gethostname()
    assert session.server_pid == os.getpid()
    started = server_process.started_at(os.getpid())
    assert started is not None
    assert abs((session.server_started_at - started).total_seconds()) < 2
    # One value per process, and near enough to what `ps` would say.
    assert session.server_started_at == server_process.STARTED_AT
    assert session.server_started_at <= timezone.now()


async def test_resumable_sessions_of_a_gone_process_wait_out_their_resume_window(
    settings,
):
    """Another server may take them over (docs/protocol.md §12): closed only once
    RESUME_SECONDS (and a heartbeat) passed since their last heartbeat."""
    settings.TRANSCRIPTION_ENGINE = "echo"
    settings.RESUME_SECONDS = 30
    gone = _gone_pid()
    long_ago = timezone.now() - dt.timedelta(seconds=30 + HEARTBEAT_SECONDS + 5)

    def make():
        def session(resumable: bool, **fields):
            return AudioSession.objects.create(
                engine="echo",
                server_host=server_process.HOST,
                server_pid=gone,
                parameters={"resumable": True} if resumable else {},
                **fields,
            )

        return {
            "resumable, in its window": session(True),
            "resumable, too late": session(True, heartbeat_at=long_ago),
            "not resumable": session(False),
        }

    sessions = await sync_to_async(make)()
    await _first_connections(startup.StartOnFirstConnection(_app))

    def statuses():
        return {
            name: AudioSession.objects.get(pk=s.pk).status
            for name, s in sessions.items()
        }

    assert await sync_to_async(statuses)() == {
        "resumable, in its window": "active",
        "resumable, too late": "failed",
        "not resumable": "failed",
    }
