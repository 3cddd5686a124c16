"""Benchmark: how close the engines' word times are to the truth, and what they cost.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_word_times.py [--repeat 3]
        [--engines pocketsphinx,whisper,whisper-base]

The speech fixtures go through each engine's worker module in this process, in
0.25 s calls as a real-time session's audio would, with word times asked
(wordTimes=true) and not. The words heard are matched to the words Festival said
(tests/fixtures/word_boundaries.txt, its own segmentation of the waves it made) and
each matched word's start and end compared with the true ones: the mean, median and
largest error, in milliseconds, and how many of the true words were heard. The
cost is the decoding CPU seconds (process time: this process decodes on one thread)
of a whole fixture with and without word times, the best of --repeat runs.
`whisper-base` is the bundled multilingual base decoding English (the model every
other language gets), joined into a temporary cache first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ("hello_world", "two_utterances")
FEED_SECONDS = 0.25


def load(engine: str, cache: Path):
    """The worker module, initialised as its decoding process would be."""
    if engine.startswith("whisper"):
        from transcription.engines import whisper_multilingual, whisper_worker
        from transcription.engines.whisper import WhisperEngine

        config = WhisperEngine(processes=1)._prepare()
        if engine == "whisper-base":
            config["location"] = str(whisper_multilingual.model_dir(cache))
            config["sha256"] = ""
        # A second model in this process: the first one's prompts are not its own.
        whisper_worker._prompts.clear()
        whisper_worker._tokenizers.clear()
        whisper_worker.init_worker(config)
        return whisper_worker
    from transcription.engines import pocketsphinx_worker
    from transcription.engines.pool import speech_gate_config

    pocketsphinx_worker.init_worker(speech_gate_config())
    return pocketsphinx_worker


def run(module, audio: bytes, word_times: bool) -> tuple[float, list]:
    """(CPU s, words of the finals) of one session over `audio`."""
    feed = int(FEED_SECONDS * 16000) * 2
    module.session_open("bench", 16000, "en-US", None, word_times)
    began = time.process_time()
    events = []
    try:
        for start in range(0, len(audio), feed):
            events += module.feed("bench", audio[start : start + feed], False, False)
        events += module.feed("bench", b"", True, False)
    finally:
        module.session_close("bench")
    cpu = time.process_time() - began
    words = [word for event in events if len(event) == 6 for word in event[5]]
    return cpu, words


def bench(args) -> None:
    import signal

    from tests.audio import fixture_pcm
    from tests.transcription.word_times import boundary_errors, matched, true_words

    audio = {name: fixture_pcm(f"{name}.wav") for name in FIXTURES}
    print(f"{'engine':<14}{'fixture':<16}{'heard':>7}{'mean':>7}{'median':>8}", end="")
    print(f"{'max ms':>8}{'CPU s without':>15}{'with':>8}")
    with tempfile.TemporaryDirectory() as cache:
        for engine in args.engines.split(","):
            module = load(engine, Path(cache))
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # init_worker ignores it
            run(module, audio["hello_world"], True)  # first-use costs left out
            all_errors: list[float] = []
            for name, pcm in audio.items():
                without = min(run(module, pcm, False)[0] for _ in range(args.repeat))
                timed = [run(module, pcm, True) for _ in range(args.repeat)]
                cpu = min(seconds for seconds, _ in timed)
                words = timed[0][1]
                errors = [e * 1000 for e in boundary_errors(words, name)]
                all_errors += errors
                heard = f"{len(matched(words, name))}/{len(true_words(name))}"
                print(f"{engine:<14}{name:<16}{heard:>7}", end="")
                print(f"{statistics.mean(errors):>7.0f}", end="")
                print(f"{statistics.median(errors):>8.0f}{max(errors):>8.0f}", end="")
                print(f"{without:>15.3f}{cpu:>8.3f}")
                if args.verbose:
                    print("    ", " ".join(f"{w}@{s:.2f}-{e:.2f}" for w, s, e in words))
            print(f"{engine:<14}{'both':<16}{'':>7}", end="")
            print(f"{statistics.mean(all_errors):>7.0f}", end="")
            print(f"{statistics.median(all_errors):>8.0f}{max(all_errors):>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="pocketsphinx,whisper,whisper-base")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="print the words")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    bench(args)


if __name__ == "__main__":
    main()
