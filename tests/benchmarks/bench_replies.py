"""Benchmark: from the end of speech to the first byte of reply audio (issue 19).

Run from the repository root (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_replies.py [--rounds 3]
        [--engine pocketsphinx] [--silence-ms 1000]

One daphne (the given offline speech engine, TTS_ENGINE=offline, a temporary SQLite
database) and a receiver on a loopback port. Each round, a client streams
tests/fixtures/hello_world.wav in real time and then stays quiet; measured: the time
from its last final (the `transcript` message, the end of speech as the server
knows it) to the first `server_response` that carries audio. The session's silence
window (`silenceMs`) is part of that time: the target is that window + 400 ms.

Cases, each as today's one-piece reply and streamed (`replyStream=true`):
- demo: the demo receiver (`manage.py run_receiver`, a one- or two-sentence answer);
- 1 sentence, 5 sentences: a receiver that answers at once;
- 100 ms / 2 s: a streaming receiver writing its first sentence after 100 ms and the
  other four 2 s later (the one-piece case gets them all as one line after 2.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from websockets.asyncio.client import connect  # noqa: E402

from tests.benchmarks.bench_offline import FIXTURES, read_wav  # noqa: E402
from tests.e2e.servers import free_port, run_daphne, run_process, server_env  # noqa: E402
from tests.transcription.voice_fakes import StreamingTcpReceiver  # noqa: E402

CHUNK = 1024
FIVE = [
    "Sure, here is what I found.",
    "The first option is the quickest.",
    "The second one costs a little less.",
    "Both are open until six tonight.",
    "Tell me which one you prefer.",
]
SCRIPTS = {
    "1 sentence": [(0.0, FIVE[0])],
    "5 sentences": [(0.0, line) for line in FIVE],
    "100 ms / 2 s": [(0.1, FIVE[0]), (2.0, " ".join(FIVE[1:]))],
}


def manage(database_url: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env({"DATABASE_URL": database_url}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def one_round(url: str, audio: bytes, rate: int) -> float:
    """Seconds from the last final to the first reply audio."""
    async with connect(url, open_timeout=10, max_size=None) as ws:
        last_final = None

        async def send() -> None:
            for start in range(0, len(audio), CHUNK):
                await ws.send(audio[start : start + CHUNK])
                await asyncio.sleep(CHUNK / (rate * 2))

        sender = asyncio.create_task(send())
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if "transcript" in message:
                    last_final = time.monotonic()
                elif message.get("type") == "server_response" and message.get("audio"):
                    if last_final is None:
                        raise RuntimeError("a reply before any final")
                    return time.monotonic() - last_final
                elif "error" in message:
                    raise RuntimeError(message["error"])
        finally:
            sender.cancel()


async def case(server, token, audio, rate, args, label) -> dict[str, float]:
    figures = {}
    for mode, query in (("one piece", ""), ("streamed", "&replyStream=true")):
        url = f"{server.ws_url}/?token={token}&silenceMs={args.silence_ms}{query}"
        try:
            times = [await one_round(url, audio, rate) for _ in range(args.rounds)]
        except Exception:
            print(server.log_path.read_text()[-12000:], file=sys.stderr)
            raise
        figures[mode] = statistics.median(times)
        print(
            f"  {label:<13} {mode:<10} median {figures[mode] * 1000:6.0f} ms "
            f"(rounds: {', '.join(f'{t * 1000:.0f}' for t in times)})",
            flush=True,
        )
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="pocketsphinx")
    parser.add_argument("--silence-ms", type=int, default=1000)
    args = parser.parse_args()
    audio, rate = read_wav(FIXTURES / "hello_world.wav")
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/bench.sqlite3"
        manage(database_url, "migrate", "--noinput")
        token = manage(database_url, "create_token", "bench", "--create-user").split()[
            -1
        ]
        env = {
            "DATABASE_URL": database_url,
            "TRANSCRIPTION_ENGINE": args.engine,
            "TTS_ENGINE": "offline",
            "SILENCE_MS_MIN": "100",
        }
        print(
            f"engine {args.engine}, offline TTS, silenceMs={args.silence_ms}, "
            f"{args.rounds} rounds; target: {args.silence_ms + 400} ms"
        )
        port = free_port()
        demo = [sys.executable, "manage.py", "run_receiver", "--port", str(port)]
        with run_process(demo, {"DATABASE_URL": database_url}, name="receiver"):
            await asyncio.sleep(2)  # the receiver listens
            receiver_env = {"RECEIVER_HOST": "127.0.0.1", "RECEIVER_PORT": str(port)}
            with run_daphne({**env, **receiver_env}) as server:
                await case(server, token, audio, rate, args, "demo")
        for label, script in SCRIPTS.items():
            receiver = await StreamingTcpReceiver(lambda d, s=script: s).start()
            try:
                receiver_env = {
                    "RECEIVER_HOST": "127.0.0.1",
                    "RECEIVER_PORT": str(receiver.port),
                }
                with run_daphne({**env, **receiver_env}) as server:
                    await case(server, token, audio, rate, args, label)
            finally:
                await receiver.stop()


if __name__ == "__main__":
    asyncio.run(main())
