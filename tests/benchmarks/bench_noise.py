"""Benchmark: what noise costs the offline decoders, without and with the speech gate.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_noise.py [--seconds 20]
        [--engines whisper,pocketsphinx] [--feed 0.25]

Each sound of tests/noises.py (white, pink, 50 Hz hum, clicks, a 440 Hz tone, plucked
notes; --seconds each) and the two speech fixtures go through an engine's worker
module in this process, as its decoding process gets a real-time session's audio:
calls of --feed seconds, partials wanted, then the last call. For each, with the
gate off (SPEECH_GATE=false: what the decoders did before it) and on (the default):
decoding CPU seconds (process time: this process decodes on one thread) per second
of audio, and the transcripts that have words (finals, partials). The gate's own
cost is inside the "on" figures.

The figures are process time, which other load on a shared machine barely moves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ("hello_world.wav", "two_utterances.wav")


def sounds(seconds: float) -> list[tuple[str, bytes]]:
    from tests.audio import fixture_pcm
    from tests.noises import NOISES, noise, pcm

    found = [(name, pcm(noise(name, seconds))) for name in NOISES]
    return found + [(name, fixture_pcm(name)) for name in SPEECH]


def load(engine: str):
    """The worker module, initialised as its decoding process would be."""
    if engine == "whisper":
        from transcription.engines import whisper_worker
        from transcription.engines.whisper import WhisperEngine

        whisper_worker.init_worker(WhisperEngine(processes=1)._prepare())
        return whisper_worker, lambda: whisper_worker.Session(16000, "en-US")
    from transcription.engines import pocketsphinx_worker
    from transcription.engines.pool import speech_gate_config

    pocketsphinx_worker.init_worker(speech_gate_config())
    return pocketsphinx_worker, lambda: pocketsphinx_worker.Session(16000)


def run(session, audio: bytes, feed_bytes: int) -> tuple[float, int, int, list[str]]:
    """(CPU s, finals, partials, final texts) of one session, words only."""
    from transcription.engines.speech_gate import has_words

    began = time.process_time()
    events = []
    for start in range(0, len(audio), feed_bytes):
        events += session.feed(audio[start : start + feed_bytes], False, True)
    events += session.feed(b"", True, True)
    cpu = time.process_time() - began
    worded = [event for event in events if has_words(event[0])]
    finals = [text for text, partial, *_ in worded if not partial]
    return cpu, len(finals), len(worded) - len(finals), finals


def bench(args) -> None:
    import signal

    from transcription.engines.speech_gate import GateConfig

    audio = sounds(args.seconds)
    feed_bytes = int(args.feed * 16000) * 2
    for engine in args.engines.split(","):
        module, session = load(engine)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # init_worker ignores Ctrl-C
        session()  # first-use costs out of the figures
        print(f"\n{engine}: decoding CPU s per audio s (finals/partials with words)")
        print(f"{'sound':<20}{'seconds':>8}{'gate off':>20}{'gate on':>20}{'saved':>8}")
        totals = {False: 0.0, True: 0.0}
        noise_seconds = 0.0
        for name, pcm in audio:
            seconds = len(pcm) / 32000
            row = {}
            for enabled in (False, True):
                module._gate = GateConfig(enabled=enabled)
                cpu, finals, partials, texts = run(session(), pcm, feed_bytes)
                row[enabled] = f"{cpu / seconds:.4f} ({finals}/{partials})"
                if name not in SPEECH:
                    totals[enabled] += cpu
                if enabled and name in SPEECH:
                    row["heard"] = " | ".join(texts)
            if name not in SPEECH:
                noise_seconds += seconds
            off, on = (float(row[k].split()[0]) for k in (False, True))
            saved = f"{(1 - on / off) * 100:.0f} %" if off else "-"
            print(f"{name:<20}{seconds:>8.1f}{row[False]:>20}{row[True]:>20}{saved:>8}")
            if "heard" in row:
                print(f"{'':<20}heard: {row['heard']}")
        off, on = (totals[k] / noise_seconds for k in (False, True))
        print(f"{'all noises':<20}{noise_seconds:>8.1f}{off:>20.4f}{on:>20.4f}", end="")
        print(f"{(1 - on / off) * 100:>7.0f} %" if off else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="of each noise")
    parser.add_argument("--engines", default="whisper,pocketsphinx")
    parser.add_argument("--feed", type=float, default=0.25, help="seconds per call")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    bench(args)


if __name__ == "__main__":
    main()
