"""Benchmark of the offline voices, Piper and espeak-ng, side by side in one run.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_tts.py [--rounds 5] [--engines piper,espeak]

For each engine (TTS_ENGINE alias), after one warm-up reply (its load time, voice
check included, is printed), each reply below is spoken --rounds times through the
engine's `synthesize_sentences`, as the voice loop does, one at a time:

- time to first audio: from the call to the first MP3 piece (median);
- whole reply: to the last piece (median);
- CPU s per reply s: process CPU time (user + system, every thread) over the
  seconds of speech made (MP3 decoded), summed over all rounds and replies.

The machine may be shared: wall times are noisy; CPU seconds are the least affected.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from pathlib import Path

import soundfile

ROOT = Path(__file__).resolve().parents[2]

REPLIES = {
    "1 sentence": "The weather is nice today, so the window stays open for an hour.",
    "5 sentences": (
        "The weather is nice today. I turned on the lights in the kitchen. "
        "Your meeting starts in one hour. Remember to bring the printed report. "
        "I will remind you again ten minutes before it begins."
    ),
}


def seconds(mp3: bytes) -> float:
    data, rate = soundfile.read(io.BytesIO(mp3))
    return len(data) / rate


async def speak(engine, text: str) -> tuple[float, float, float]:
    """Time to the first piece, to the last, and the seconds of speech."""
    start = time.monotonic()
    first = 0.0
    audio = 0.0
    async for piece in engine.synthesize_sentences(text, language="en-US"):
        if not first:
            first = time.monotonic() - start
        audio += seconds(piece)
    return first, time.monotonic() - start, audio


async def bench(name: str, rounds: int) -> dict[str, str]:
    from django.test import override_settings

    from transcription.voice_loop import tts

    with override_settings(TTS_ENGINE=name):
        engine = tts.get_tts()
    row: dict[str, str] = {}
    cpu, wall = time.process_time(), time.monotonic()
    await speak(engine, "Hello.")
    row["load + first reply"] = (
        f"{time.monotonic() - wall:.2f} s ({time.process_time() - cpu:.2f} CPU s)"
    )
    for label, text in REPLIES.items():
        firsts, wholes, audio = [], [], 0.0
        cpu = time.process_time()
        for _ in range(rounds):
            first, whole, spoken = await speak(engine, text)
            firsts.append(first)
            wholes.append(whole)
            audio += spoken
        cpu = time.process_time() - cpu
        row[f"{label}: speech"] = f"{audio / rounds:.1f} s"
        row[f"{label}: first audio"] = f"{statistics.median(firsts):.3f} s"
        row[f"{label}: whole reply"] = f"{statistics.median(wholes):.3f} s"
        row[f"{label}: CPU s / reply s"] = f"{cpu / audio:.3f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default="piper,espeak")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings

    engines = args.engines.split(",")
    rows = {name: asyncio.run(bench(name, args.rounds)) for name in engines}
    print(
        f"TTS, {args.rounds} rounds per reply, PIPER_CPU_THREADS="
        f"{settings.PIPER_CPU_THREADS}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'':<32}" + "".join(f"{name:>26}" for name in engines))
    for label in rows[engines[0]]:
        print(f"{label:<32}" + "".join(f"{rows[n][label]:>26}" for n in engines))


if __name__ == "__main__":
    main()
