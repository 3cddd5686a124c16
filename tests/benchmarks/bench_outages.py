"""Benchmark: what an 8-second Redis or PostgreSQL outage does to a live session.

Run from the repository root (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_outages.py [--outage 8] [--only redis]

For each dependency it starts a server of its own (redis-server, or an `initdb` cluster,
on a free port), daphne on it (the words engine of the tests: each frame is one final;
a loopback receiver; SILENCE_SECONDS=0.3, so each word is a batch with its reply), and a
client that says a word every 0.5 s. After 4 s (the baseline, same process tree) the
dependency is stopped for --outage seconds (Redis killed; PostgreSQL `-m immediate`),
started again, and the client talks 4 s more and ends. Printed per phase: finals sent
and received, final latency (word sent → its transcript), replies received and their
latency (its transcript → the reply of its batch); then what a new session opened at
the outage's start and one opened right after it got, and how long after the restart
the last reply owed arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.e2e.servers import PostgresCluster, RedisServer, run_daphne  # noqa: E402
from tests.e2e.test_database_outage import manage  # noqa: E402
from tests.transcription.voice_fakes import TcpReceiver  # noqa: E402

WORD_SECONDS = 0.5


class Talker:
    """One session saying w1, w2, … and noting when each transcript and reply came."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.sent: dict[str, float] = {}
        self.heard: dict[str, float] = {}
        self.replied: dict[str, float] = {}
        self.batch_word: dict[str, str] = {}
        self.n = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message, now = json.loads(raw), time.monotonic()
            if "transcript" in message:
                self.heard[message["transcript"]] = now
            elif message.get("type") == "server_response":
                # One batch may hold several words: "You said w3 / w4".
                for word in message["message"].removeprefix("You said ").split(" / "):
                    self.replied.setdefault(word, now)

    async def talk(self, seconds: float) -> list[str]:
        words = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.n += 1
            word = f"w{self.n}"
            self.sent[word] = time.monotonic()
            await self.ws.send(word.encode())
            words.append(word)
            await asyncio.sleep(WORD_SECONDS)
        return words

    def phase(self, name: str, words: list[str]) -> None:
        heard = [self.heard[w] - self.sent[w] for w in words if w in self.heard]
        replies = [
            self.replied[w] - self.heard[w]
            for w in words
            if w in self.replied and w in self.heard
        ]
        print(
            f"  {name:<9} finals {len(heard)}/{len(words)}"
            f"  latency p50 {ms(heard)} max {ms(heard, max)}"
            f"  replies {len(replies)}/{len(words)}"
            f"  latency p50 {ms(replies)} max {ms(replies, max)}"
        )


def ms(values: list[float], pick=statistics.median) -> str:
    return f"{pick(values) * 1000:7.0f} ms" if values else "      - ms"


async def probe(url: str) -> str:
    """A new session: what it gets for one word (or its refusal), and how fast."""
    start = time.monotonic()
    try:
        async with connect(url, open_timeout=10) as ws:
            with contextlib.suppress(ConnectionClosed):  # refused: its error waits
                await ws.send(b"probe")
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            took = time.monotonic() - start
            if "error" in first:
                await asyncio.wait_for(ws.wait_closed(), 10)
                return f"{first} + close {ws.close_code} in {took * 1000:.0f} ms"
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            return (
                f"transcript in {took * 1000:.0f} ms, {reply.get('type')} in "
                f"{(time.monotonic() - start) * 1000:.0f} ms"
            )
    except Exception as exc:
        return f"failed after {(time.monotonic() - start) * 1000:.0f} ms: {exc!r}"


async def scenario(name: str, dependency, env: dict[str, str], raw_token: str, outage):
    receiver = await TcpReceiver().start()
    env = {
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "TTS_ENGINE": "tests.transcription.voice_fakes.BrokenSpeech",
        "SILENCE_SECONDS": "0.3",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "VOICE_WORKER_IN_PROCESS": "true",
        **env,
    }
    print(f"{name}: {outage:g} s outage")
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        async with connect(url) as ws:
            talker = Talker(ws)
            talker.phase("before", await talker.talk(4))
            dependency.stop()
            during_probe = asyncio.create_task(probe(url))
            during = await talker.talk(outage)
            dependency.start()
            restarted = time.monotonic()
            after_probe = asyncio.create_task(probe(url))
            after = await talker.talk(4)
            await ws.send("END_OF_STREAM")
            await asyncio.wait_for(talker.reader, 30)
            talker.phase("outage", during)
            talker.phase("after", after)
            owed = [talker.replied[w] for w in during if w in talker.replied]
            if owed:
                print(
                    "  the outage's replies: the last arrived "
                    f"{(max(owed) - restarted) * 1000:.0f} ms after the restart"
                )
            print(f"  new session during the outage: {await during_probe}")
            print(f"  new session right after the restart: {await after_probe}")
            print(f"  the session closed {ws.close_code}")
    await receiver.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=8.0)
    parser.add_argument("--only", choices=["redis", "postgres"])
    args = parser.parse_args()
    if args.only in (None, "redis"):
        with RedisServer() as redis, PostgresCluster() as pg:
            manage(pg, "migrate", "--noinput")
            token = manage(pg, "create_token", "bench", "--create-user").split()[-1]
            env = {"REDIS_URL": redis.url, "DATABASE_URL": pg.url}
            await scenario("Redis", redis, env, token, args.outage)
    if args.only in (None, "postgres"):
        with PostgresCluster() as pg:
            manage(pg, "migrate", "--noinput")
            token = manage(pg, "create_token", "bench", "--create-user").split()[-1]
            env = {"DATABASE_URL": pg.url}
            await scenario("PostgreSQL", pg, env, token, args.outage)


if __name__ == "__main__":
    asyncio.run(main())
