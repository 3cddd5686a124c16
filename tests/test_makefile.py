"""`make run` refuses a busy port before it changes anything."""

import os
import shutil
import socket
import subprocess
import sys
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
