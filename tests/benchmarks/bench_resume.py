"""Benchmark: from a dropped socket to the first message on the resumed one.

Run from the repository root (not collected by pytest), with PostgreSQL and Redis:

    .venv/bin/python tests/benchmarks/bench_resume.py [--rounds 20] \
        [--database-url postgres://postgres@127.0.0.1:5432/vp_resume] \
        [--redis-url redis://127.0.0.1:6379/7]

It migrates that database, creates a token, and starts two daphne processes (the
words engine of the tests: each frame is one final; a loopback receiver) and a batch
worker. Each round opens a resumable session, says one word, waits for its
transcript, cuts the socket without a close frame (TCP reset) and, at once, resumes
it: on the same server, on the other one (the first alive: handed over through
Redis), and on the other one after the first was killed -9 (a fresh first server per
round). Printed per case: the time from the cut to the `resumed` message, and to the
replayed final (after=0), median and worst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from websockets.asyncio.client import connect  # noqa: E402

from tests.e2e.servers import run_daphne, run_process, server_env  # noqa: E402
from tests.transcription.voice_fakes import TcpReceiver  # noqa: E402


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 20))


async def one_round(first, second, token: str, *, kill: bool) -> tuple[float, float]:
    ws = await connect(f"{first.ws_url}/?token={token}&resumable=true")
    session_id = (await recv(ws))["id"]
    await ws.send(b"word")
    await recv(ws)
    if kill:
        first.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.process.wait, 10)
    else:
        ws.transport.abort()
    cut = time.perf_counter()
    resumed = await connect(
        f"{second.ws_url}/?token={token}&resume={session_id}&after=0"
    )
    answer = await recv(resumed)
    first_message = time.perf_counter() - cut
    assert answer.get("type") == "resumed", answer
    assert (await recv(resumed)).get("seq") == 1
    replayed = time.perf_counter() - cut
    await resumed.send("END_OF_STREAM")
    with contextlib.suppress(Exception):
        async for _ in resumed:
            pass
    if kill:
        with contextlib.suppress(Exception):
            await ws.close()
    return first_message, replayed


def report(name: str, times: list[tuple[float, float]]) -> None:
    first = [t[0] * 1000 for t in times]
    replay = [t[1] * 1000 for t in times]
    print(
        f"{name:32} n={len(times):3}  resumed: median {statistics.median(first):6.1f}"
        f" ms, max {max(first):6.1f} ms;  replayed final: median "
        f"{statistics.median(replay):6.1f} ms, max {max(replay):6.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/vp_resume"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    services = {"DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url}
    manage(services, "migrate", "--noinput")
    token = manage(services, "create_token", "bench-resume", "--create-user").split()[
        -1
    ]
    receiver = await TcpReceiver().start()
    env = {
        **services,
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "TTS_ENGINE": "offline",
        "SILENCE_SECONDS": "60",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "VOICE_WORKER_IN_PROCESS": "false",
        "LOG_LEVEL": "WARNING",
    }
    worker = [sys.executable, "manage.py", "run_worker", "--id", "bench"]
    try:
        with (
            run_daphne(env) as a,
            run_daphne(env) as b,
            run_process(worker, env, name="worker"),
        ):
            for name, first, second in (
                ("same server", a, a),
                ("other server, first alive", a, b),
            ):
                await one_round(first, second, token, kill=False)  # warm-up
                times = [
                    await one_round(first, second, token, kill=False)
                    for _ in range(args.rounds)
                ]
                report(name, times)
            killed = []
            for _ in range(max(args.rounds // 4, 3)):
                with run_daphne(env) as doomed:
                    killed.append(await one_round(doomed, b, token, kill=True))
            report("other server, first killed -9", killed)
    finally:
        await receiver.stop()


if __name__ == "__main__":
    asyncio.run(main())
