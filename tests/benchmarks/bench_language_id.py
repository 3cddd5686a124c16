"""Benchmark of language=auto: what identifying a session's language costs.

Run from the repository root (not collected by pytest: the name is bench_*.py):

    .venv/bin/python tests/benchmarks/bench_language_id.py [--threads 1]

In this process, on the Whisper worker module the decoding processes run (the
bundled tiny.en and the bundled multilingual base, int8 on CPU, --threads threads),
each clip is decoded twice as a session, fed in 0.1 s pieces as fast as it goes:
once with its language asked (the baseline) and once with language=auto. Printed:

- the language identified and its probability, and how many tries it took;
- when: the seconds of the clip's audio fed before the language came out (a client
  streaming in real time gets the message about then, plus the CPU time of the try);
- CPU s of the auto session against the baseline: the cost of identification;
- CPU s of one detect_language call (on the clip's first 3 s).

The clips are the English fixtures (Festival) and espeak-ng's Spanish and Swedish:
synthetic speech (no licensed human recording in those languages is available
offline); figures for human speech are in issue 22. The machine may be shared:
wall times are noisy, CPU seconds (process time) less so.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parents[2]
PIECE = 3200  # 0.1 s at 16 kHz
SPANISH = "Me llamo Ana y vivo en Madrid. Hoy hace frío y está nevando fuera."
SWEDISH = "Jag heter Anna och jag bor i Stockholm. Idag är det kallt och det snöar."


def _setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()


def _fixture(name: str) -> bytes:
    data, rate = soundfile.read(ROOT / "tests" / "fixtures" / name, dtype="float32")
    if data.ndim > 1:
        data = data.mean(axis=1)
    return _pcm16(soxr.resample(data, rate, 16000) if rate != 16000 else data)


def _espeak(text: str, voice: str) -> bytes:
    from transcription.voice_loop.tts.espeak import speak_mp3

    data, rate = soundfile.read(io.BytesIO(speak_mp3(text, voice)), dtype="float32")
    return _pcm16(soxr.resample(data, rate, 16000))


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _session(worker, audio: bytes, language: str) -> dict:
    """One session fed in 0.1 s pieces: CPU s, the language event and when."""
    from transcription.engines.language_id import LanguageIdentified

    key = f"bench-{language}"
    worker.session_open(key, 16000, language)
    found, at = None, None
    started = time.process_time()
    for offset in range(0, len(audio) + PIECE, PIECE):
        piece = audio[offset : offset + PIECE]
        last = offset + PIECE >= len(audio) + PIECE
        for event in worker.feed(key, piece, last, True):
            if isinstance(event, LanguageIdentified):
                found, at = event, min(len(audio), offset + len(piece)) / 32000
        if last:
            break
    cpu = time.process_time() - started
    tries = worker._sessions[key].tries
    worker.session_close(key)
    return {"cpu": cpu, "found": found, "at": at, "tries": tries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    _setup()
    from django.conf import settings

    from transcription.engines import whisper_multilingual, whisper_worker
    from transcription.engines.whisper_model import BUNDLED_SHA256, bundled_model_dir

    base = whisper_multilingual.model_dir(Path(settings.WHISPER_CACHE_DIR))
    whisper_worker.init_worker(
        {
            "location": str(bundled_model_dir()),
            "sha256": BUNDLED_SHA256,
            "device": "cpu",
            "compute_type": "int8",
            "cpu_threads": args.threads,
            "multilingual": {
                "location": str(base),
                "sha256": whisper_multilingual.SHA256,
                "distribution": whisper_multilingual.DISTRIBUTION_HINT,
            },
        }
    )
    clips = [
        ("hello_world.wav (Festival)", _fixture("hello_world.wav"), "en-US"),
        ("two_utterances.wav (Festival)", _fixture("two_utterances.wav"), "en-US"),
        ("Spanish (espeak-ng)", _espeak(SPANISH, "es"), "es-ES"),
        ("Swedish (espeak-ng)", _espeak(SWEDISH, "sv"), "sv-SE"),
    ]
    whisper_worker._detector().detect_language(audio=np.zeros(16000, np.float32))
    print(
        f"{'clip':31} {'audio s':>7} {'asked':>6} {'identified':>16} {'tries':>5} "
        f"{'at s':>5} {'CPU s asked':>11} {'CPU s auto':>10} {'+CPU s':>6} "
        f"{'detect CPU s':>12}"
    )
    for name, audio, language in clips:
        asked = _session(whisper_worker, audio, language)
        auto = _session(whisper_worker, audio, "auto")
        samples = np.frombuffer(audio[: 3 * 32000], "<i2").astype(np.float32) / 32768
        started = time.process_time()
        whisper_worker._detector().detect_language(audio=samples)
        detect = time.process_time() - started
        found = auto["found"]
        shown = f"{found.language} {found.probability:.2f}" if found else "none"
        print(
            f"{name:31} {len(audio) / 32000:7.2f} {language:>6} {shown:>16} "
            f"{auto['tries']:5d} {auto['at'] or 0:5.1f} {asked['cpu']:11.2f} "
            f"{auto['cpu']:10.2f} {auto['cpu'] - asked['cpu']:6.2f} {detect:12.2f}"
        )


if __name__ == "__main__":
    main()
