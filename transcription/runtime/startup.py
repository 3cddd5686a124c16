"""Work a server process does once, at its first connection.

Daphne has no ASGI lifespan, so the first HTTP or WebSocket connection starts it:
closing the records of sessions that a stopped server left open, the in-process batch
worker (so batches left pending by a restart are delivered without
waiting for a new session) and the engine's warm-up (the offline engine starts its
decoding processes, so the first session does not wait for them).
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from transcription import services
from transcription.engines import get_engine
from transcription.models import HEARTBEAT_SECONDS
from transcription.runtime import worker_runner
from transcription.voice_loop.receiver import receiver_config

logger = logging.getLogger(__name__)

_tasks: set[asyncio.Task] = set()


async def server_started() -> None:
    await database_sync_to_async(services.sessions_close_abandoned)()
    later = asyncio.create_task(_close_abandoned_after_resume_window())
    _tasks.add(later)
    later.add_done_callback(_done)
    if receiver_config() is not None and settings.VOICE_WORKER_IN_PROCESS:
        worker_runner.ensure_in_process()
    warm_up = getattr(get_engine(), "warm_up", None)
    if warm_up is not None:
        await warm_up()


async def _close_abandoned_after_resume_window() -> None:
    """Resumable sessions of a stopped server were left for their resume window
    (they may be taken over here): those not resumed are closed once it is over."""
    await asyncio.sleep(settings.RESUME_SECONDS + HEARTBEAT_SECONDS)
    await database_sync_to_async(services.sessions_close_abandoned)()


def _done(task: asyncio.Task) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("server start-up failed", exc_info=task.exception())


class StartOnFirstConnection:
    """ASGI wrapper that runs `server_started()` in the background, once."""

    def __init__(self, app):
        self.app = app
        self.started = False

    async def __call__(self, scope, receive, send):
        if not self.started and scope["type"] in ("http", "websocket"):
            self.started = True
            task = asyncio.create_task(server_started())
            _tasks.add(task)
            task.add_done_callback(_done)
        return await self.app(scope, receive, send)
