"""`/healthz` (the process answers) and `/readyz` (it can serve: every check named).

Each readiness check returns a `Check`: ok, failed with a short reason, or skipped
(not needed here). Reasons name what failed, never a URL, a host or a secret: an
exception is told by its class only. Checks run at once, each bounded by
READY_CHECK_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from transcription import selectors
from transcription.engines import get_engine
from transcription.models import WORKER_SEEN_SECONDS
from transcription.voice_loop.receiver import receiver_config

READY_CHECK_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    status: str  # "ok", "failed" or "skipped"
    reason: str = ""

    def as_json(self) -> dict[str, str]:
        if not self.reason:
            return {"status": self.status}
        return {"status": self.status, "reason": self.reason}


OK = Check("ok")


def failed(reason: str) -> Check:
    return Check("failed", reason)


def _database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return OK


async def database() -> Check:
    return await sync_to_async(_database)()


async def channel_layer() -> Check:
    """A message sent to a channel of our own comes back."""
    layer = get_channel_layer()
    if layer is None:
        return failed("no channel layer is configured")
    channel = await layer.new_channel("readyz.")
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    return OK if message.get("type") == "readyz.ping" else failed("wrong message")


# Each engine's warm-up runs once per event loop; a failed one is tried again.
_warm_ups: dict[int, asyncio.Task] = {}


async def engine() -> Check:
    """The engine loads, and its warm-up (offline: its decoding processes start)
    finished once; later checks cost nothing."""
    speech = await sync_to_async(get_engine, thread_sensitive=False)()
    warm_up = getattr(speech, "warm_up", None)
    if warm_up is None:
        return OK
    loop = asyncio.get_running_loop()
    task = _warm_ups.get(id(speech))
    if task is None or task.get_loop() is not loop or _failed(task):
        task = _warm_ups[id(speech)] = loop.create_task(warm_up())
    # Shielded: a warm-up slower than one check goes on for the next.
    await asyncio.shield(task)
    return OK


def _failed(task: asyncio.Task) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _worker() -> Check:
    if receiver_config() is None:
        return Check("skipped", "no receiver is configured")
    seen = selectors.worker_last_seen()
    if seen is None:
        return failed("no batch worker has run")
    silent = (timezone.now() - seen).total_seconds()
    if silent > WORKER_SEEN_SECONDS:
        return failed(f"no batch worker seen for {silent:.0f} s")
    return OK


async def worker() -> Check:
    return await sync_to_async(_worker)()


def _batches() -> Check:
    count, oldest = selectors.batches_due_summary(now=timezone.now())
    limit = settings.READY_MAX_BATCH_AGE
    if oldest > limit:
        return failed(
            f"{count} due batch(es), the oldest waiting {oldest:.0f} s "
            f"(READY_MAX_BATCH_AGE {limit:g} s)"
        )
    return OK


async def batches() -> Check:
    return await sync_to_async(_batches)()


CHECKS: dict[str, Callable[[], Awaitable[Check]]] = {
    "database": database,
    "channel_layer": channel_layer,
    "engine": engine,
    "worker": worker,
    "batches": batches,
}


async def _run(check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        return await asyncio.wait_for(check(), READY_CHECK_TIMEOUT)
    except TimeoutError:
        return failed(f"no answer within {READY_CHECK_TIMEOUT:g} s")
    except Exception as exc:
        # The class only: a message may hold a URL with credentials.
        return failed(exc.__class__.__name__)


async def healthz(request: HttpRequest) -> JsonResponse:
    return _no_store(JsonResponse({"status": "ok"}))


async def readyz(request: HttpRequest) -> JsonResponse:
    results = await asyncio.gather(*(_run(check) for check in CHECKS.values()))
    checks = dict(zip(CHECKS, results, strict=True))
    ready = all(check.status != "failed" for check in results)
    body = {
        "status": "ok" if ready else "failed",
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
    return _no_store(JsonResponse(body, status=200 if ready else 503))


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response
