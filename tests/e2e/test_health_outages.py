"""/readyz tells the truth fast: PostgreSQL and Redis of the test's own, stopped,
killed, hung and started again under a real daphne with sessions streaming.

Within 2 s whatever is down, 503 naming it; 200 within 5 s of its return; each
failure counted in /metrics. What the sessions themselves go through is not judged
here (test_outages).
"""

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect

from tests.e2e.servers import (
    ROOT,
    PostgresCluster,
    RedisServer,
    run_daphne,
    server_env,
)
from tests.e2e.test_operations import samples

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (PostgresCluster.available() and RedisServer.available()),
        reason="needs PostgreSQL's server binaries and redis-server",
    ),
]

ANSWER_SECONDS = 2  # /readyz answers within this, whatever is down
BACK_SECONDS = 5  # ... and says ok within this of a dependency's return


@pytest.fixture
def postgres():
    with PostgresCluster(database="vp_health") as cluster:
        yield cluster


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


@pytest.fixture
def server(postgres, redis_server, tmp_path):
    env = {
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis_server.url,
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    _manage(env, "migrate", "--noinput", "--verbosity", "0")
    with run_daphne(env) as live:
        printed = _manage(
            env, "ensure_demo", "--env-file", str(tmp_path / ".env"),
            "--url", live.http_url,
        )  # fmt: skip
        live.token = re.search(r"API token\s+(vp_\S+)", printed)[1]
        yield live


def get(url: str, timeout: float = ANSWER_SECONDS) -> tuple[int, dict | str]:
    """Status and body; a timeout raises (the answer did not come in time)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def failing(body: dict) -> set[str]:
    return {name for name, c in body["checks"].items() if c["status"] == "failed"}


def until_ready(server, seconds: float) -> dict:
    """Ask /readyz until it says 200; each answer within ANSWER_SECONDS."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = get(f"{server.http_url}/readyz")
        if status == 200:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def assert_down(server, names: set[str]) -> dict:
    """/readyz answers 503 in time, naming exactly `names` (and /healthz 200)."""
    status, body = get(f"{server.http_url}/readyz")
    assert status == 503, body
    assert failing(body) == names, body
    assert get(f"{server.http_url}/healthz") == (200, {"status": "ok"})
    return body


@contextlib.asynccontextmanager
async def sessions_streaming(server, count: int = 3):
    """`count` sessions sending a final every 0.1 s until the block ends (each
    one's fate through an outage is not judged here)."""
    stop = asyncio.Event()

    async def talk() -> None:
        with contextlib.suppress(OSError, Exception):
            url = f"{server.ws_url}/?token={server.token}"
            async with connect(url, open_timeout=10) as ws:
                number = 0
                while not stop.is_set():
                    await ws.send(f"word {number}".encode())
                    number += 1
                    await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(talk()) for _ in range(count)]
    await asyncio.sleep(1)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()


def ready_failures(server) -> dict[str, float]:
    status, text = get(f"{server.http_url}/metrics", timeout=10)
    assert status == 200, text
    return {
        dict(labels)["check"]: value
        for (name, labels), value in samples(text).items()
        if name == "voiceproject_ready_check_failures_total"
    }


async def test_readyz_through_stopped_and_killed_dependencies(
    server, postgres, redis_server
):
    def outage() -> None:
        until_ready(server, 30)  # the first connection starts the server's work
        assert until_ready(server, 0)["checks"]["channel_layer"] == {"status": "ok"}

        postgres.stop(immediate=True)
        body = assert_down(server, {"database"})
        assert body["checks"]["database"]["reason"] == "OperationalError"
        assert body["checks"]["batches"]["status"] == "skipped"

        redis_server.kill()
        body = assert_down(server, {"database", "channel_layer"})
        assert body["checks"]["channel_layer"]["reason"] == "ConnectionError"
        assert_down(server, {"database", "channel_layer"})

        postgres.start()
        redis_server.start()
        until_ready(server, BACK_SECONDS)

    async with sessions_streaming(server):
        await asyncio.to_thread(outage)
    failures = ready_failures(server)
    assert failures["database"] >= 3
    assert failures["channel_layer"] >= 2
    assert failures["engine"] == 0


async def test_readyz_through_hung_dependencies(server, postgres, redis_server):
    """SIGSTOPped servers accept TCP connections and never answer: the probe's own
    timeouts answer for them."""

    def hang() -> None:
        until_ready(server, 30)
        postgres.pause()
        try:
            body = assert_down(server, {"database"})
            assert body["checks"]["database"]["reason"].startswith("no answer within")
            redis_server.pause()
            try:
                assert_down(server, {"database", "channel_layer"})
                assert_down(server, {"database", "channel_layer"})
            finally:
                redis_server.resume()
        finally:
            postgres.resume()
        until_ready(server, BACK_SECONDS)

    async with sessions_streaming(server):
        await asyncio.to_thread(hang)
