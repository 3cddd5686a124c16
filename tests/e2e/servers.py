"""Real servers for end-to-end tests: daphne in a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
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


def _wait_port(port: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server for port {port} exited")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    """A redis-server of a test's own on a free loopback port, nothing persisted.

    start() (again after stop() or kill(), on the same port), stop(immediate=True)
    (SIGKILL, as a crash; immediate=False: SIGTERM), kill(), url; a context manager.
    pause() and resume(): a server that hangs (SIGSTOP, SIGCONT).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self.process
        _wait_port(self.port, 10, alive=lambda: process.poll() is None)

    def stop(self, immediate: bool = True) -> None:
        if self.process is None:
            return
        if immediate:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        self.stop(immediate=True)

    def pause(self) -> None:
        """SIGSTOP: connections open, nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries of this machine (Debian's layout)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else None


class PostgresCluster:
    """A PostgreSQL cluster of a test's own: initdb in a temporary folder, a free
    loopback port, trust authentication, one database (`database`) created at the
    first start. As root, its programs run as the `postgres` user.

    start() (again after stop() or kill(), same data and port), stop(immediate=True)
    (`pg_ctl stop -m immediate`, as a crash or a failover; immediate=False: `-m
    fast`), kill() (SIGKILL to the postmaster and its processes), url; a context
    manager that removes the folder at exit. pause() and resume(): a server that
    hangs (SIGSTOP, SIGCONT to all its processes: TCP connects, nothing answers).
    """

    def __init__(self, database: str = "voiceproject", port: int | None = None) -> None:
        self.database = database
        self.port = port or free_port()
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError(
                "no PostgreSQL server binaries under /usr/lib/postgresql"
            )
        self.folder = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        self._created = False
        self._paused = False

    @staticmethod
    def available() -> bool:
        if postgres_bin() is None:
            return False
        if os.geteuid() != 0:
            return True
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd="/")

    def start(self) -> None:
        if not self._created:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.folder} -c fsync=off"
        )
        self._run(
            "pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.log),
            "-o", options,
        )  # fmt: skip
        if not self._created:
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                self.database,
            )  # fmt: skip
            self._created = True

    def stop(self, immediate: bool = True) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        mode = "immediate" if immediate else "fast"
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", mode)

    def _postmaster(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return None
        return int(pid_file.read_text().split()[0])

    def _signal_all(self, signum: int) -> None:
        postmaster = self._postmaster()
        if postmaster is None:
            return
        try:
            pids = {postmaster, *children(postmaster)}
        except FileNotFoundError:  # gone already
            pids = {postmaster}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self) -> None:
        postmaster = self._postmaster()
        if postmaster is None:
            return
        self._signal_all(signal.SIGKILL)
        wait_gone({postmaster}, timeout=10)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def pause(self) -> None:
        self._paused = True
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._paused = False
        self._signal_all(signal.SIGCONT)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._paused:
                self.resume()
            self.stop(immediate=False)
        except (OSError, subprocess.SubprocessError):
            self.kill()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


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
