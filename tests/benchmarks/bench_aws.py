"""What an AWS Transcribe stream costs our server process, against the echo engine.

    /work/main/.venv/bin/python tests/benchmarks/bench_aws.py [--streams 10,40]
        [--seconds 20]

For each stream count, daphne (`voiceproject.asgi`, pinned to core 1) runs once with
`TRANSCRIPTION_ENGINE=echo` and once with `TRANSCRIPTION_ENGINE=aws` against the fake
Transcribe service of the tests (HTTP/2 over TLS, SigV4 checked on the request and on
every audio event; it answers each stream's first audio event and then only listens,
so nothing is decoded). `manage.py loadtest` streams the bundled fixture in real time
on N sockets; it and the fake run on core 0. Printed per run: daphne's CPU % over the
streaming window, per stream, and split by thread: Python's (the event loop: the
relay, and for AWS the SDK's event-stream encoding and chunk signing; the database
threads) and awscrt's own (its event loop: TLS, HTTP/2). The AWS row's "extra" is its
CPU per stream minus the echo row's: what the engine itself costs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_relay import (
    LOADGEN_CORE,
    ROOT,
    SERVER_CORE,
    cpu_seconds,
    free_port,
    prepare_database,
    profiling,
    wait_listening,
)

WARM_UP_SECONDS = 6.0


def thread_cpu(pid: int) -> dict[tuple[str, str], float]:
    """CPU seconds of each thread of `pid`, by (name, id). Python's threads keep the
    process's name; awscrt names its own (`AwsEventLoop…`)."""
    out: dict[tuple[str, str], float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name, task.name] = cpu_seconds(pid, str(task / "stat"))
        except OSError:  # the thread ended meanwhile
            continue
    return out


def run_one(engine: str, streams: int, args, env: dict[str, str], token: str) -> dict:
    port = free_port()
    log = Path(args.workdir) / f"{engine}-{streams}.log"
    server_env = {**os.environ, **env, "TRANSCRIPTION_ENGINE": engine}
    cmd = [sys.executable, "-m", "daphne", "--bind", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *cmd, "voiceproject.asgi:application"],
            cwd=ROOT,
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port, server, log)
        process = Path(f"/proc/{server.pid}/comm").read_text().strip()
        load = subprocess.Popen(
            [
                *("taskset", "-c", LOADGEN_CORE, sys.executable, "manage.py"),
                *("loadtest", "--url", f"ws://127.0.0.1:{port}/"),
                *("--streams", str(streams), "--seconds", str(args.seconds)),
            ],
            cwd=ROOT,
            env={**server_env, "VOICEPROJECT_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # The window: every stream connected and its engine open (loadtest's start,
        # its streams spread over a second, TLS and HTTP/2 set-up), until the end.
        time.sleep(WARM_UP_SECONDS)
        window = args.seconds - WARM_UP_SECONDS - 1.0
        before, t0 = thread_cpu(server.pid), time.monotonic()
        with profiling(server.pid, window, args, f"{engine}-{streams}"):
            time.sleep(window)
        after, t1 = thread_cpu(server.pid), time.monotonic()
        report, _ = load.communicate(timeout=args.seconds + 120)
    finally:
        server.terminate()
        server.wait(timeout=20)
    elapsed = t1 - t0
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    python = sum(v for (name, _), v in used.items() if name == process)
    total = sum(used.values())
    ended = next(
        (line for line in report.splitlines() if line.startswith("streams:")), "?"
    )
    return {
        "engine": engine,
        "streams": streams,
        "cpu": 100 * total / elapsed,
        "per_stream": 100 * total / elapsed / streams,
        "python": 100 * python / elapsed,
        "others": 100 * (total - python) / elapsed,
        "threads": len(after),
        "ended": ended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="10,40", help="a list: 10,40")
    parser.add_argument("--seconds", type=float, default=20, help="at least 10")
    parser.add_argument("--py-spy", help="record daphne's stacks into this DIR")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOADGEN_CORE)})  # the fake's thread runs here too
    from tests.transcription.fake_transcribe import Play, running_fake

    with tempfile.TemporaryDirectory(prefix="bench-aws-") as tmp:
        args.workdir = tmp
        env, token = prepare_database(Path(tmp))
        env.pop("TRANSCRIPTION_ENGINE")
        with running_fake(Path(tmp)) as fake:
            fake.play = Play(script=[("hello from the fake", False)])
            env.update(fake.env)
            print(
                f"{'engine':<8}{'streams':>8}{'CPU %':>8}{'per stream':>12}"
                f"{'extra':>8}{'Python':>8}{'awscrt':>8}{'threads':>9}"
                "  loadtest",
                flush=True,
            )
            for streams in [int(n) for n in args.streams.split(",")]:
                echo = None
                for engine in ("echo", "aws"):
                    r = run_one(engine, streams, args, env, token)
                    extra = r["per_stream"] - echo["per_stream"] if echo else 0.0
                    echo = echo or r
                    print(
                        f"{engine:<8}{streams:>8}{r['cpu']:>8.1f}"
                        f"{r['per_stream']:>12.2f}{extra:>8.2f}{r['python']:>8.1f}"
                        f"{r['others']:>8.1f}{r['threads']:>9}  {r['ended']}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
