"""`make run` refuses a busy port before it changes anything, and Ctrl-C stops
everything it started. (The real `make run` writes what it always does in the
checkout: `.env` if missing, `staticfiles/`; its database and metrics go to tmp.)"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


@pytest.fixture
def busy_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # Not make's own variables either: under `make test` they would make this a
    # sub-make, whose messages read "make[2]: …".
    dropped = {"RECEIVER_HOST", "RECEIVER_URL", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"}
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run(
        ["make", "--no-print-directory", *args, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        env={**clean, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_busy_port_fails_in_one_line_before_anything(busy_port, tmp_path):
    result = make("run", f"PORT={busy_port}", tmp_path=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    assert first == (
        f"make run: port {busy_port} on 127.0.0.1 is in use (another make run?): "
        f"stop it, or choose another port: make run PORT={busy_port + 1}"
    )
    assert all(line.startswith("make: ***") for line in rest)  # make's own trailer
    assert not (tmp_path / "venv").exists()  # nothing installed, migrated or reset


def test_the_demo_receivers_port_is_checked_too(busy_port, tmp_path):
    result = make(
        "run", f"PORT={free_port()}", f"RECEIVER_PORT={busy_port}", tmp_path=tmp_path
    )
    assert result.returncode != 0
    assert f"make run RECEIVER_PORT={busy_port + 1}" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_free_ports_pass_and_a_configured_receiver_is_not_checked(busy_port, tmp_path):
    port = free_port()
    assert make("ports-free", f"PORT={port}", tmp_path=tmp_path).returncode == 0
    result = make(
        "ports-free",
        f"PORT={port}",
        f"RECEIVER_PORT={busy_port}",
        tmp_path=tmp_path,
        RECEIVER_HOST="127.0.0.1",
    )
    assert result.returncode == 0, result.stderr


def port_free(port: int) -> bool:
    """As `make run` probes it (SO_REUSEADDR: TIME_WAIT counts as free)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def descendants(pid: int) -> set[int]:
    found = set()
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found |= {int(child), *descendants(int(child))}
    return found


def alive(pids: set[int]) -> set[int]:
    # A zombie has exited: only its parent's wait is missing.
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    return {pid for pid in pids if running(pid)}


def serves(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def make_run(tmp_path: Path, port: int, receiver_port: int):
    """`make run` in a session of its own (its own process group, as a terminal's
    foreground job), serving on `port`; yields (make, every process it started)."""
    dropped = {"RECEIVER_HOST", "RECEIVER_URL", "REDIS_URL", "DJANGO_TEST_DATABASE"}
    dropped |= {"PYTEST_CURRENT_TEST", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "TRANSCRIPTION_ENGINE": "echo",  # no decoding processes to start
    }
    log = (tmp_path / f"make-run-{port}.log").open("ab")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", "HOST=127.0.0.1", f"PORT={port}",
         f"RECEIVER_PORT={receiver_port}", f"METRICS_DIR={tmp_path / 'metrics'}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not (serves(port) and not port_free(receiver_port)):
            output = (tmp_path / f"make-run-{port}.log").read_text()
            assert process.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.2)
        started = descendants(process.pid)
        yield process, started
    finally:
        for pid in alive({process.pid, *started, *descendants(process.pid)}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
        log.close()


def interrupt(process: subprocess.Popen, started: set[int]) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(started) == set(), "left running after Ctrl-C"


@pytest.mark.skipif(not Path(ROOT, ".venv/bin/python").exists(), reason="no .venv")
def test_ctrl_c_stops_everything_and_make_run_starts_again(tmp_path):
    port, receiver_port = free_port(), free_port()
    with make_run(tmp_path, port, receiver_port) as (process, started):
        assert len(started) >= 3  # the supervisor, daphne, the demo receiver
        interrupt(process, started)
    assert port_free(port)
    assert port_free(receiver_port)

    with make_run(tmp_path, port, receiver_port) as (process, started):
        assert serves(port)
        interrupt(process, started)
    assert port_free(port)
    assert port_free(receiver_port)
