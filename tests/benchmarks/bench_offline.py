"""Benchmark of the offline engines, pocketsphinx and Whisper side by side in one run.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_offline.py [--streams 1,4,8]
        [--clips DIR] [--processes 2] [--engines pocketsphinx,whisper]

For each engine, on a warm pool of --processes decoding processes:

- WER: every clip (the fixtures, and NAME.wav + NAME.txt pairs of --clips DIR) is
  streamed through the engine as fast as it takes it, in 1024-byte chunks, as a
  client of the protocol would; the finals, joined, are scored against the words
  of the reference (case and punctuation ignored). WER = word edits / reference words,
  over all clips.
- CPU s per audio s: CPU time (user + system) of the decoding processes during
  that pass, over the seconds of audio.
- N concurrent real-time streams (N = --streams), started 1 s apart, each streaming
  the clips back to back in real time: time from each utterance's end (in its
  audio) to its final's arrival (p50 / p95 over all finals), time from the onset
  of speech to the first partial (median over streams), and how far the streams
  fell behind (the worst time from END_OF_STREAM to the stream's last final).

The machine may be shared: the figures are noisy; CPU seconds (process time) are
the least affected.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CHUNK = 1024
# The fixtures' words (tests/fixtures/make_fixtures.sh).
FIXTURE_TEXT = {
    "hello_world.wav": "hello world",
    "two_utterances.wav": "the weather is nice today please turn on the lights",
}


class Clip:
    def __init__(self, name: str, audio: bytes, rate: int, text: str) -> None:
        self.name, self.audio, self.rate, self.text = name, audio, rate, text

    @property
    def seconds(self) -> float:
        return len(self.audio) / (self.rate * 2)


def read_wav(path: Path) -> tuple[bytes, int]:
    """16-bit mono PCM at 16 kHz (downmixed and resampled when needed)."""
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != 16000:
        mono = soxr.resample(mono, rate, 16000)
    pcm = np.clip(np.rint(mono * 32768), -32768, 32767).astype("<i2")
    return pcm.tobytes(), 16000


def load_clips(extra: Path | None) -> tuple[list[Clip], list[Clip]]:
    fixtures = [
        Clip(name, *read_wav(FIXTURES / name), text)
        for name, text in FIXTURE_TEXT.items()
    ]
    others = []
    if extra is not None:
        for wav_path in sorted(extra.glob("*.wav")):
            text_path = wav_path.with_suffix(".txt")
            if text_path.exists():
                text = text_path.read_text(encoding="utf-8")
                others.append(Clip(wav_path.name, *read_wav(wav_path), text))
    return fixtures, others


NUMBERS = ("zero", "one", "two", "three", "four", "five")
NUMBERS += ("six", "seven", "eight", "nine", "ten")


def words(text: str) -> list[str]:
    """Lower case, no punctuation, numbers up to ten as digits (Whisper writes
    digits, pocketsphinx words)."""
    found = re.findall(r"[a-z0-9']+", text.lower())
    return [str(NUMBERS.index(w)) if w in NUMBERS else w for w in found]


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


async def stream_clip(engine, audio: bytes, rate: int, realtime: bool, delay=0.0):
    """(start time, END time, [(event, arrival)]) for one session."""
    from transcription.engines import StreamParams

    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    stream = await engine.open(StreamParams(sample_rate=rate, session_id="bench"))

    async def collect():
        return [(event, loop.time()) async for event in stream.events()]

    collector = asyncio.create_task(collect())
    start = loop.time()
    try:
        for index in range(0, len(audio), CHUNK):
            await stream.send_audio(audio[index : index + CHUNK])
            if realtime:
                due = start + (index // CHUNK + 1) * CHUNK / (rate * 2)
                await asyncio.sleep(max(0.0, due - loop.time()))
            else:
                await asyncio.sleep(0)
        ended = loop.time()
        await stream.end_audio()
        return start, ended, await collector
    finally:
        await stream.aclose()


async def accuracy(engine, clips: list[Clip]) -> tuple[float, list[str]]:
    errors = total = 0
    heard = []
    for clip in clips:
        _, _, events = await stream_clip(engine, clip.audio, clip.rate, False)
        hyp = " ".join(e.text for e, _ in events if not e.is_partial)
        ref = words(clip.text)
        errors += edits(ref, words(hyp))
        total += len(ref)
        heard.append(f"{clip.name}: {hyp}")
    return errors / max(1, total), heard


async def concurrent(engine, clips: list[Clip], streams: int) -> dict[str, float]:
    gap = np.zeros(16000, dtype="<i2").tobytes()  # 0.5 s between clips
    audio = gap.join(clip.audio for clip in clips)
    pids = [s["pid"] for s in await worker_stats(engine)]
    cpu_before = cpu_seconds(pids)
    results = await asyncio.gather(
        *(stream_clip(engine, audio, 16000, True, delay=i) for i in range(streams))
    )
    cpu = (cpu_seconds(pids) - cpu_before) / (streams * len(audio) / 32000)
    latencies, first_partials, behind = [], [], []
    for start, ended, events in results:
        finals = [(e, t) for e, t in events if not e.is_partial]
        latencies += [t - (start + e.end) for e, t in finals]
        partials = [(e, t) for e, t in events if e.is_partial]
        if partials:
            onset = start + partials[0][0].start
            first_partials.append(partials[0][1] - onset)
        behind.append(max(0.0, max(t for _, t in finals) - ended) if finals else 0.0)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return {
        "p50": statistics.median(latencies),
        "p95": p95,
        "first_partial": statistics.median(first_partials) if first_partials else -1,
        "behind": max(behind),
        "cpu": cpu,
    }


async def worker_stats(engine) -> list[dict]:
    return [
        await asyncio.wrap_future(w.executor.submit(engine.pool.module.stats))
        for w in engine.pool.workers
    ]


def make_engine(name: str, processes: int):
    from transcription.engines.pocketsphinx import PocketsphinxEngine
    from transcription.engines.whisper import WhisperEngine

    return {"pocketsphinx": PocketsphinxEngine, "whisper": WhisperEngine}[name](
        processes
    )


async def bench(args) -> None:
    from transcription.engines.pool import shutdown_pools

    fixtures, others = load_clips(args.clips)
    counts = [int(n) for n in args.streams.split(",")]
    rows = []
    for name in args.engines.split(","):
        engine = make_engine(name, args.processes)
        began = time.perf_counter()
        await engine.warm_up()
        warm = time.perf_counter() - began
        await accuracy(engine, fixtures[:1])  # first decodes in each process
        pids = [s["pid"] for s in await worker_stats(engine)]
        cpu_before = cpu_seconds(pids)
        wer_fix, heard = await accuracy(engine, fixtures)
        wer_other, heard_other = await accuracy(engine, others)
        cpu = cpu_seconds(pids) - cpu_before
        audio_seconds = sum(c.seconds for c in fixtures + others)
        row = {
            "engine": name,
            "warm": warm,
            "wer_fix": wer_fix,
            "wer_other": wer_other if others else None,
            "cpu": cpu / audio_seconds,
        }
        for n in counts:
            row[n] = await concurrent(engine, others or fixtures, n)
        row["rss"] = max(peak_rss_mib(s["pid"]) for s in await worker_stats(engine))
        rows.append(row)
        for line in heard + heard_other:
            print(f"  [{name}] {line}")
        engine.pool.shutdown()
    shutdown_pools()
    report(rows, counts, fixtures, others, args)


def report(rows, counts, fixtures, others, args) -> None:
    print()
    source = f"{args.clips} ({len(others)} clips, " if others else "the fixtures ("
    seconds = sum(c.seconds for c in (others or fixtures))
    print(
        f"{args.processes} decoding processes; concurrent streams play {source}"
        f"{seconds:.1f} s) in real time, started 1 s apart"
    )
    header = f"{'':<28}" + "".join(f"{r['engine']:>16}" for r in rows)
    print(header)

    def line(label: str, fmt) -> None:
        print(f"{label:<28}" + "".join(f"{fmt(r):>16}" for r in rows))

    line("WER, fixtures (TTS)", lambda r: f"{r['wer_fix'] * 100:.1f} %")
    if others:
        line(f"WER, {args.clips.name}", lambda r: f"{r['wer_other'] * 100:.1f} %")
    line("CPU s/audio s, files", lambda r: f"{r['cpu']:.3f}")
    line("warm-up (processes) s", lambda r: f"{r['warm']:.1f}")
    line("max RSS per process MiB", lambda r: f"{r['rss']:.0f}")
    for n in counts:
        line(
            f"N={n} final p50/p95 s",
            lambda r, n=n: "{p50:.2f}/{p95:.2f}".format(**r[n]),
        )
        line(f"N={n} first partial s", lambda r, n=n: f"{r[n]['first_partial']:.2f}")
        line(f"N={n} fell behind s", lambda r, n=n: f"{r[n]['behind']:.2f}")
        line(f"N={n} CPU s/audio s", lambda r, n=n: f"{r[n]['cpu']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,4,8", help="N values (default 1,4,8)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--engines", default="pocketsphinx,whisper")
    parser.add_argument(
        "--clips", type=Path, help="a folder of NAME.wav + NAME.txt (reference text)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
