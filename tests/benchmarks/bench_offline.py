"""Benchmark of the offline engine: K sessions at once on 1 vs 2 decoding processes.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    /work/main/.venv/bin/python tests/benchmarks/bench_offline.py [--sessions 4]
        [--repeat 3]

For each pool size it warms the pool up (processes, decoders), then streams the
two-utterance fixture (7.1 s) in 1024-byte chunks in K sessions at once:

- "fast": audio sent as fast as the engine takes it. Speed = audio seconds decoded per
  wall second (the inverse of the real-time factor); wall = first chunk to last final.
- "realtime": audio paced at real time. Latency = arrival of a final minus the end of
  its speech in the audio (p50 / max over all finals).

In both, a 10 ms ticker runs on the event loop; "loop lag" is how late it woke up at
worst. Each row is the best of --repeat runs, as the machine may be shared. A
reference row decodes in a thread instead of a process: pocketsphinx holds the GIL
while it decodes, which is what the ticker shows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "two_utterances.wav"
CHUNK = 1024


def read_fixture() -> tuple[bytes, int]:
    with wave.open(str(FIXTURE)) as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - before - 0.01)


async def one_session(engine, audio: bytes, rate: int, realtime: bool):
    """Stream the audio; returns (start time, [(event, arrival time)])."""
    from transcription.engines import StreamParams

    loop = asyncio.get_running_loop()
    stream = await engine.open(StreamParams(sample_rate=rate, session_id="bench"))

    async def collect():
        return [(event, loop.time()) async for event in stream.events()]

    collector = asyncio.create_task(collect())
    start = loop.time()
    chunk_seconds = CHUNK / (rate * 2)
    try:
        for index in range(0, len(audio), CHUNK):
            await stream.send_audio(audio[index : index + CHUNK])
            if realtime:
                due = start + (index // CHUNK + 1) * chunk_seconds
                await asyncio.sleep(max(0.0, due - loop.time()))
            else:
                await asyncio.sleep(0)
        await stream.end_audio()
        return start, await collector
    finally:
        await stream.aclose()


async def run(engine, sessions: int, realtime: bool) -> dict[str, float]:
    audio, rate = read_fixture()
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(ticker(stop, lags))
    began = time.perf_counter()
    results = await asyncio.gather(
        *(one_session(engine, audio, rate, realtime) for _ in range(sessions))
    )
    wall = time.perf_counter() - began
    stop.set()
    await tick
    audio_seconds = sessions * len(audio) / (rate * 2)
    latencies = [
        arrival - (start + event.end)
        for start, events in results
        for event, arrival in events
        if not event.is_partial
    ]
    finals = [[e.text for e, _ in events if not e.is_partial] for _, events in results]
    assert all(any("lights" in text for text in texts) for texts in finals), finals
    return {
        "wall": wall,
        "speed": audio_seconds / wall,
        "rtf": wall / audio_seconds,
        "lag_max_ms": max(lags) * 1000,
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_max_ms": max(latencies) * 1000,
    }


def thread_engine():
    """The same engine, but decoding in one thread of this process (reference)."""
    from transcription.engines import offline_worker
    from transcription.engines.offline import OfflineEngine

    engine = OfflineEngine(processes=1)
    worker = engine.pool.acquire()  # creates the (unused) process executor
    engine.pool.release(worker)
    worker.executor.shutdown()
    worker.executor = ThreadPoolExecutor(max_workers=1)
    offline_worker._release_decoder(offline_worker._take_decoder())
    return engine


async def cold_open(engine) -> float:
    """Seconds for the first session: spawning the process, loading a decoder."""
    from transcription.engines import StreamParams

    began = time.perf_counter()
    stream = await engine.open(StreamParams())
    seconds = time.perf_counter() - began
    await stream.aclose()
    return seconds


async def bench(sessions: int, repeat: int) -> None:
    from transcription.engines.offline import OfflineEngine, shutdown_pools

    print(
        f"{sessions} sessions at once x {FIXTURE.name} (7.1 s), 1024-byte chunks, "
        f"best of {repeat}; speed = audio s per wall s (1/RTF)"
    )
    print(
        f"{'decoding in':<16}{'mode':<10}{'wall s':>8}{'RTF':>7}{'speed':>7}"
        f"{'final lat. p50/max ms':>23}{'loop lag max ms':>17}"
    )
    configs = [
        ("1 process", lambda: OfflineEngine(processes=1)),
        ("2 processes", lambda: OfflineEngine(processes=2)),
        ("1 thread (ref)", thread_engine),
    ]
    for label, make in configs:
        engine = make()
        cold = await cold_open(engine)
        await run(engine, sessions, realtime=False)  # warm-up: decoders for K
        for mode in ("fast", "realtime"):
            runs = [
                await run(engine, sessions, realtime=mode == "realtime")
                for _ in range(repeat)
            ]
            r = min(runs, key=lambda r: r["wall"])
            lag = min(r["lag_max_ms"] for r in runs)
            latency = (
                f"{r['latency_p50_ms']:>12.0f} /{r['latency_max_ms']:>7.0f}"
                if mode == "realtime"
                else f"{'-':>21}"  # audio time runs ahead of the clock
            )
            print(
                f"{label:<16}{mode:<10}{r['wall']:>8.2f}{r['rtf']:>7.3f}"
                f"{r['speed']:>7.1f}{latency}{lag:>17.1f}"
            )
        print(f"{'':<16}(first session's open, cold: {cold:.2f} s)")
        for worker in engine.pool.workers:
            worker.executor.shutdown()
        engine.pool.workers = []
    shutdown_pools()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="K (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (best)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    asyncio.run(bench(args.sessions, args.repeat))


if __name__ == "__main__":
    main()
