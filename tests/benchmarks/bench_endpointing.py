"""Benchmark: how endpointingMs and Finalize move the time from the end of speech
to the final, on the offline engines.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_endpointing.py [--engines whisper]
        [--endpointing 200,default,500,1000,2000] [--rounds 2] [--processes 1]

For each engine, on a warm pool of --processes decoding processes, the fixture
two_utterances.wav (two sentences about 2 s apart) is streamed in real time
(1024-byte chunks, paced by the clock) through the engine's own stream, once per
--endpointing value (`default`: no endpointingMs, the baseline) and round:

- end of speech → final: for each final, the time from the moment the client had
  sent its last word (the final's end time in the audio: the endpointer's speech end)
  to the final's arrival, median and worst over all finals.
- Finalize → final: the same stream, stopped 50 ms after each sentence's end (as
  measured by the baseline) with a Finalize, then carried on: the time from the
  Finalize to the final, median and worst.

The engine is driven in-process (no socket: the relay adds the same small time to
every row). The machine may be shared: the figures are noisy; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 1024
RATE = 16000


@dataclasses.dataclass
class Finals:
    waits: list[float] = dataclasses.field(default_factory=list)  # seconds
    ends: list[float] = dataclasses.field(default_factory=list)  # audio seconds
    texts: list[str] = dataclasses.field(default_factory=list)


async def run(engine, audio: bytes, endpointing_ms, finalize_at=()) -> Finals:
    """Stream `audio` in real time; with `finalize_at` (audio seconds), a Finalize
    there, and the wait measured from it instead of from the speech end."""
    from transcription.engines import StreamParams, TranscriptEvent

    loop = asyncio.get_running_loop()
    params = StreamParams(
        sample_rate=RATE, session_id="bench", endpointing_ms=endpointing_ms
    )
    stream = await engine.open(params)
    start = loop.time()
    finalized: list[float] = []  # loop time of each Finalize
    result = Finals()

    async def collect() -> None:
        async for event in stream.events():
            if isinstance(event, TranscriptEvent) and not event.is_partial:
                now = loop.time()
                if finalize_at:
                    sent = finalized[len(result.waits)]
                else:
                    sent = start + event.end
                result.waits.append(now - sent)
                result.ends.append(event.end)
                result.texts.append(event.text)

    collector = asyncio.create_task(collect())
    marks = [int(at * RATE) * 2 for at in finalize_at]
    try:
        for index in range(0, len(audio), CHUNK):
            piece = audio[index : index + CHUNK]
            if marks and index + len(piece) >= marks[0]:
                cut = marks.pop(0) - index
                await stream.send_audio(piece[:cut])
                finalized.append(loop.time())
                await stream.finalize()
                piece = piece[cut:]
            await stream.send_audio(piece)
            due = start + (index + CHUNK) / (RATE * 2)
            await asyncio.sleep(max(0.0, due - loop.time()))
        await stream.end_audio()
        await collector
    finally:
        await stream.aclose()
    if finalize_at:  # the finals after the last Finalize are not its own
        del result.waits[len(finalize_at) :]
    return result


def make_engine(name: str, processes: int):
    from transcription.engines.pocketsphinx import PocketsphinxEngine
    from transcription.engines.whisper import WhisperEngine

    engine_class = {"whisper": WhisperEngine, "pocketsphinx": PocketsphinxEngine}
    return engine_class[name](processes)


def summary(waits: list[float]) -> str:
    ms = sorted(w * 1000 for w in waits)
    return f"{statistics.median(ms):7.0f} ms {max(ms):7.0f} ms"


async def bench(args) -> None:
    from tests.audio import fixture_pcm
    from transcription.engines.pool import shutdown_pools

    audio = fixture_pcm("two_utterances.wav")
    values = [None if v == "default" else int(v) for v in args.endpointing.split(",")]
    try:
        for name in args.engines.split(","):
            engine = make_engine(name, args.processes)
            await engine.warm_up()
            await run(engine, audio[: RATE * 2], None)  # first decodes, warm
            print(f"\n{name}: end of speech → final, {args.rounds} round(s)")
            print(f"{'endpointingMs':>14} {'median':>10} {'worst':>10}  finals")
            baseline_ends: list[float] = []
            for value in values:
                waits, texts = [], []
                for _ in range(args.rounds):
                    finals = await run(engine, audio, value)
                    waits += finals.waits
                    texts = finals.texts
                    if value is None:
                        baseline_ends = finals.ends
                label = "default" if value is None else str(value)
                print(f"{label:>14} {summary(waits)}  {len(texts)}: {texts}")
            ends = baseline_ends or (await run(engine, audio, None)).ends
            waits = []
            for _ in range(args.rounds):
                at = [end + 0.05 for end in ends]
                waits += (await run(engine, audio, None, finalize_at=at)).waits
            print(f"{'Finalize':>14} {summary(waits)}  (50 ms after each end)")
            engine.pool.shutdown()
    finally:
        shutdown_pools()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="whisper")
    parser.add_argument("--endpointing", default="200,default,500,1000,2000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
