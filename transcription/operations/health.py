"""`/healthz` (the process answers) and `/readyz` (it can serve: every check named).

Each readiness check returns a `Check`: ok, failed with a short reason, or skipped
(not needed here). Reasons name what failed, never a URL, a host or a secret: an
exception is told by its class only. Checks run at once, each bounded by
READY_CHECK_TIMEOUT, so that /readyz answers within 2 s whatever is down; each
failure is counted (`voiceproject_ready_check_failures_total{check}`).

The database and Redis are probed on connections of the probe's own, with short
timeouts: never on a pooled or thread-local connection that a dead peer may have
left hanging, and never through `sync_to_async`, whose await, once cancelled, still
waits for its thread (asgiref 3.13): a hung connect would hold /readyz for its whole
timeout (130 s by default for psycopg).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Awaitable, Callable

import redis.asyncio
from channels.layers import get_channel_layer
from channels_redis.utils import create_pool
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from transcription import metrics, selectors
from transcription.engines import get_engine
from transcription.executors import run_blocking
from transcription.models import WORKER_SEEN_SECONDS
from transcription.voice_loop.receiver import receiver_config

READY_CHECK_TIMEOUT = 1.5
# The probes' own connections: libpq's shortest connect timeout is 2 s (the check's
# deadline comes first; the thread ends by itself soon after), queries 1 s.
PROBE_CONNECT_SECONDS = 2
PROBE_STATEMENT_MS = 1000
PROBE_REDIS_SECONDS = 1.0
# A thread pool of the probes' own (transcription.executors): a probe stuck until
# its connect timeout holds one of its threads, never one that sessions use.
PROBE_POOL = "readyz"


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


def _failure(exc: BaseException) -> Check:
    # The class only: a message may hold a URL with credentials.
    return failed(exc.__class__.__name__)


def probe_connection() -> BaseDatabaseWrapper:
    """A new connection to the default database, with the probe's short timeouts."""
    params = copy.deepcopy(connections.settings[DEFAULT_DB_ALIAS])
    params.update(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)
    options = params.setdefault("OPTIONS", {})
    options.pop("pool", None)  # psycopg's pool: its connections may be stale
    if params["ENGINE"] == "django.db.backends.postgresql":
        options["connect_timeout"] = PROBE_CONNECT_SECONDS
        limit = f"-c statement_timeout={PROBE_STATEMENT_MS}"
        options["options"] = f"{options.get('options', '')} {limit}".strip()
    elif params["ENGINE"] == "django.db.backends.sqlite3":
        options["timeout"] = PROBE_STATEMENT_MS / 1000
    return load_backend(params["ENGINE"]).DatabaseWrapper(params, DEFAULT_DB_ALIAS)


NEEDS_DATABASE = Check("skipped", "needs the database")
NO_RECEIVER = Check("skipped", "no receiver is configured")


def _without_database() -> dict[str, Check]:
    worker = NEEDS_DATABASE if receiver_config() is not None else NO_RECEIVER
    return {"worker": worker, "batches": NEEDS_DATABASE}


def _database_checks() -> dict[str, Check]:
    """database (`SELECT 1`), then worker and batches, on one probe connection."""
    probe = probe_connection()
    # The selectors use the default alias: in this thread, it is the probe's.
    connections[DEFAULT_DB_ALIAS] = probe
    try:
        try:
            with probe.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            return {"database": _failure(exc), **_without_database()}
        return {
            "database": OK,
            "worker": _guarded(_worker),
            "batches": _guarded(_batches),
        }
    finally:
        del connections[DEFAULT_DB_ALIAS]
        probe.close()


def _guarded(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:
        return _failure(exc)


async def database_checks() -> dict[str, Check]:
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT):
            return await run_blocking(PROBE_POOL, _database_checks)
    except TimeoutError:
        late = failed(f"no answer within {READY_CHECK_TIMEOUT:g} s")
        return {"database": late, **_without_database()}


async def _redis_ping(host: dict) -> None:
    """PING one of the layer's Redis servers on a connection of the probe's own."""
    pool = create_pool(
        {
            **host,
            "socket_connect_timeout": PROBE_REDIS_SECONDS,
            "socket_timeout": PROBE_REDIS_SECONDS,
            # One try: the check's verdict is its answer.
            "retry": None,
            "retry_on_error": [],
        }
    )
    try:
        await redis.asyncio.Redis(connection_pool=pool).ping()
    finally:
        await pool.disconnect()


async def channel_layer() -> Check:
    """Redis layers: each server answers PING. Others: a message sent to a channel
    of our own comes back."""
    layer = get_channel_layer()
    if layer is None:
        return failed("no channel layer is configured")
    hosts = getattr(layer, "hosts", None)
    if isinstance(hosts, list) and all(isinstance(host, dict) for host in hosts):
        await asyncio.gather(*(_redis_ping(host) for host in hosts))
        return OK
    channel = await layer.new_channel("readyz.")
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    return OK if message.get("type") == "readyz.ping" else failed("wrong message")


# Each engine's warm-up runs once per event loop; a failed one is tried again.
_warm_ups: dict[int, asyncio.Task] = {}


async def engine() -> Check:
    """The engine loads, and its warm-up (offline: its decoding processes start)
    finished once; later checks cost nothing."""
    # Not on PROBE_POOL: a hung database there must not make the engine look late.
    speech = await asyncio.to_thread(get_engine)
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
        return NO_RECEIVER
    seen = selectors.worker_last_seen()
    if seen is None:
        return failed("no batch worker has run")
    silent = (timezone.now() - seen).total_seconds()
    if silent > WORKER_SEEN_SECONDS:
        return failed(f"no batch worker seen for {silent:.0f} s")
    return OK


def _batches() -> Check:
    count, oldest = selectors.batches_due_summary(now=timezone.now())
    limit = settings.READY_MAX_BATCH_AGE
    if oldest > limit:
        return failed(
            f"{count} due batch(es), the oldest waiting {oldest:.0f} s "
            f"(READY_MAX_BATCH_AGE {limit:g} s)"
        )
    return OK


# In the order /readyz names them; the database's run together (database_checks).
CHECK_NAMES = ("database", "channel_layer", "engine", "worker", "batches")
for _name in CHECK_NAMES:
    metrics.READY_CHECK_FAILURES.labels(check=_name)  # each series from 0


async def _run(check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT):
            return await check()
    except TimeoutError:
        return failed(f"no answer within {READY_CHECK_TIMEOUT:g} s")
    except Exception as exc:
        return _failure(exc)


async def readiness() -> dict[str, Check]:
    """Every check, run at once, by name."""
    stored, layer, speech = await asyncio.gather(
        database_checks(), _run(channel_layer), _run(engine)
    )
    checks = {**stored, "channel_layer": layer, "engine": speech}
    checks = {name: checks[name] for name in CHECK_NAMES}
    for name, check in checks.items():
        if check.status == "failed":
            metrics.READY_CHECK_FAILURES.labels(check=name).inc()
    return checks


async def healthz(request: HttpRequest) -> JsonResponse:
    return _no_store(JsonResponse({"status": "ok"}))


async def readyz(request: HttpRequest) -> JsonResponse:
    checks = await readiness()
    ready = all(check.status != "failed" for check in checks.values())
    body = {
        "status": "ok" if ready else "failed",
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
    return _no_store(JsonResponse(body, status=200 if ready else 503))


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response
