"""Real servers for end-to-end tests: daphne in a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The URL of the database this test run uses (the test database, once set up)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


@dataclass
class LiveServer:
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_until_listening(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"daphne exited early:\n{server.output()}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"daphne did not listen within {timeout} s:\n{server.output()}")


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server subprocess: the real settings, the test database."""
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_TEST_DATABASE", "PYTEST_CURRENT_TEST"}
    }
    base.update(
        {
            "DJANGO_SETTINGS_MODULE": "voiceproject.settings",
            "DJANGO_SECRET_KEY": "e2e-test-secret-key",
            "DATABASE_URL": database_url(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    base.update(env or {})
    return base


@contextlib.contextmanager
def run_process(
    args: list[str], env: dict[str, str] | None = None, *, name: str = "process"
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A subprocess of this project with its output in a log file; stopped at exit."""
    log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=ROOT, env=server_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def run_daphne(
    env: dict[str, str] | None = None,
    *,
    ready_timeout: float = 60,
    app: str = "voiceproject.asgi:application",
    port: int | None = None,
) -> Iterator[LiveServer]:
    """daphne serving `app` (the project's) on a loopback port (`port`, or a free
    one), `env` added."""
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "daphne",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        app,
    ]
    with run_process(args, env, name="daphne") as (process, log):
        server = LiveServer(port=port, process=process, log_path=log)
        _wait_until_listening(server, ready_timeout)
        yield server


async def drain(ws) -> list[dict]:
    """Every JSON message a websockets client receives until the server closes."""
    messages = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            messages.append(json.loads(message))
    return messages


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()}


def wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page: (name, sorted labels) → value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_until(url: str, done, *, timeout: float = 20) -> dict:
    """Scrape until `done(samples)` holds; bounded (AssertionError with the last)."""
    deadline = time.monotonic() + timeout
    while True:
        figures = scrape(url)
        if done(figures) or time.monotonic() > deadline:
            ours = {k: v for k, v in figures.items() if k[0].startswith("voiceproject")}
            assert done(figures), ours
            return figures
        time.sleep(0.05)
