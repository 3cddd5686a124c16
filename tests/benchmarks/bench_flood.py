"""Benchmark: a client flooding the server, and a 2-minute file at full speed.

Run from the repository root (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_flood.py [--seconds 20]
        [--baseline PATH_TO_ANOTHER_CHECKOUT]

It serves the embedded default (offline engine, SQLite in a temporary directory) with
daphne on a free loopback port, then:

1. file: `manage.py transcribe_file` streams a 2-minute WAV (the two-utterance
   fixture repeated) at full speed; prints the wall time and the finals;
2. flood: one client sends 64 KiB frames of speech as fast as the server takes them
   for --seconds, then END_OF_STREAM; prints what was sent and how much the daphne
   process (and its decoder processes) grew at their peak (waiting at most 120 s for
   the server to finish what it took).

With --baseline, the same runs first against the server of another checkout (e.g. a
`git worktree` of an earlier commit), so both appear side by side from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "two_utterances.wav"
FRAME = 64 * 1024
DRAIN_BOUND_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Child processes started by any of the process's threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def family_rss_mib(pid: int, field: str = "VmRSS") -> tuple[float, float]:
    """(daphne's own, its decoder processes' together) in MiB."""
    kids = sum(kib(child, field) for child in children(pid))
    return kib(pid, field) / 1024, kids / 1024


class Server:
    """The project's daphne (from `repo`) on a fresh SQLite database."""

    def __init__(self, repo: Path, workdir: Path) -> None:
        self.repo = repo
        self.port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "voiceproject.settings",
            "DJANGO_SECRET_KEY": "bench-secret-key",
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "PYTHONPATH": str(repo),
        }
        self.env.pop("RECEIVER_HOST", None)
        self.env.pop("RECEIVER_URL", None)
        self.manage("migrate", "--noinput", "-v0")
        out = self.manage("create_token", "bench", "--create-user", capture=True)
        self.token = out.strip().splitlines()[-1]
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "daphne", "-b", "127.0.0.1"),
                *("-p", str(self.port), "voiceproject.asgi:application"),
            ],
            cwd=repo,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)

    def manage(self, *args: str, capture: bool = False) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.repo,
            env=self.env,
            check=True,
            capture_output=capture,
            text=True,
        )
        return done.stdout or ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/?token={self.token}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def speech(seconds: float) -> bytes:
    with wave.open(str(FIXTURE)) as wav:
        audio = wav.readframes(wav.getnframes())
    repeats = int(seconds * 32000 / len(audio)) + 1
    return (audio * repeats)[: int(seconds * 32000)]


async def flood(url: str, seconds: float, audio: bytes, pid: int) -> dict:
    sent = 0
    started = time.monotonic()
    async with connect(url + "&sendPartials=false", max_size=None) as ws:
        while time.monotonic() - started < seconds:
            offset = sent % (len(audio) - FRAME)
            await ws.send(audio[offset : offset + FRAME])
            sent += FRAME
        ended = time.monotonic()
        peak = family_rss_mib(pid, "VmHWM")[0]  # before the server drains the rest
        await ws.send("END_OF_STREAM")
        finals = 0
        try:
            async with asyncio.timeout(DRAIN_BOUND_SECONDS):
                async for message in ws:
                    finals += '"transcript"' in message
        except TimeoutError:
            pass  # an unbounded backlog can take hours to decode: not waited for
        code = ws.close_code
    return {
        "peak_mib": peak,
        "sent_mb": sent / 1e6,
        "audio_s": sent / 32000,
        "drain_s": time.monotonic() - ended,
        "finals": finals,
        "close": code,
    }


async def warm_up(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(b"\0" * 3200)
        await ws.send("END_OF_STREAM")
        async for _ in ws:
            pass


def run(label: str, repo: Path, seconds: float, wav_path: Path) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(repo, Path(workdir))
        try:
            asyncio.run(warm_up(server.url))
            # The file first: after a flood, a server without bounds may still be
            # decoding what it queued.
            started = time.monotonic()
            out = server.manage(
                "transcribe_file",
                str(wav_path),
                "--url",
                f"ws://127.0.0.1:{server.port}/",
                "--token",
                server.token,
                capture=True,
            )
            wall = time.monotonic() - started
            finals = len([line for line in out.splitlines() if line.strip()])
            print(
                f"{label:10} 2-minute file at full speed: {wall:.1f} s wall "
                f"({120 / wall:.1f}x real time), {finals} lines of finals"
            )
            own, kids = family_rss_mib(server.process.pid)
            result = asyncio.run(
                flood(server.url, seconds, speech(30), server.process.pid)
            )
            peak_own = result["peak_mib"]
            _, kids_after = family_rss_mib(server.process.pid)
            drained = (
                f"drained in {result['drain_s']:.1f} s"
                if result["close"]
                else f"not drained within {DRAIN_BOUND_SECONDS:g} s"
            )
            print(
                f"{label:10} flood {seconds:g} s: sent {result['sent_mb']:.0f} MB "
                f"({result['audio_s']:.0f} s of audio), close {result['close']}, "
                f"{result['finals']} finals, {drained}; daphne {own:.0f} -> peak "
                f"{peak_own:.0f} MiB (+{peak_own - own:.0f}), decoders {kids:.0f} -> "
                f"{kids_after:.0f} MiB"
            )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "two_minutes.wav"
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes(speech(120))
        if args.baseline:
            run("baseline", args.baseline.resolve(), args.seconds, wav_path)
        run("this tree", ROOT, args.seconds, wav_path)


if __name__ == "__main__":
    main()
