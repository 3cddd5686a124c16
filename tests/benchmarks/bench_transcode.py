"""What decoding the audio browsers and phones send costs, against PCM as it is.

    .venv/bin/python tests/benchmarks/bench_transcode.py [--seconds 60] [--sessions 20]

In-process, no engine: each session is `transcode.open_transcoded` in front of a sink
that only counts the PCM it gets. The fixture (two_utterances.wav, looped to
`--seconds`) is encoded once per encoding with PyAV (as the tests make it), then sent
in chunks of 250 ms of audio, MediaRecorder's usual timeslice, as fast as the stream
takes them. Printed per encoding: the CPU time of this process (every thread) per
second of audio, one session alone and `--sessions` at once, and how much faster than
real time one session decodes. The `pcm` row is the baseline: the same path with
nothing to decode. Then the memory of `--sessions` idle WebM sessions (each sent its
first second, its decoder then waiting for more), per session, and one G.711 table
lookup of a 64 KiB frame (the largest frame). Last, decompression bombs: `--seconds`
of silence in each shape up to the largest the server decodes (8 channels, 192 kHz),
what it weighs per second of audio (PCM: 32000 bytes) and costs to decode to 16 kHz
mono, one session alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402

from tests.audio import encode, encode_silence, read_pcm  # noqa: E402
from transcription.engines import StreamParams, TranscriptEvent, g711  # noqa: E402
from transcription.engines.transcode import open_transcoded  # noqa: E402

ENCODINGS = ["pcm", "mulaw", "alaw", "webm", "ogg-opus", "mp4", "flac"]
# Silence in each shape: (encoding, PyAV's format and codec, rate, layout).
BOMBS = [
    ("flac", "flac", "flac", 16000, "mono"),
    ("flac", "flac", "flac", 48000, "stereo"),
    ("flac", "flac", "flac", 192000, "7.1"),
    ("ogg-opus", "ogg", "libopus", 48000, "mono"),
    ("ogg-opus", "ogg", "libopus", 48000, "7.1"),
]
TIMESLICE = 0.25


class Sink:
    """An engine's stream that counts what it gets."""

    def __init__(self) -> None:
        self.bytes = 0
        self.ended = asyncio.Event()

    async def send_audio(self, chunk: bytes) -> None:
        self.bytes += len(chunk)

    def backlog_full(self) -> bool:
        return False

    async def end_audio(self) -> None:
        self.ended.set()

    async def events(self):
        await self.ended.wait()
        yield TranscriptEvent(text="", is_partial=False)

    async def aclose(self) -> None:
        self.ended.set()


async def one_session(encoding: str, data: bytes, seconds: float) -> int:
    sink = Sink()

    async def open_pcm(params: StreamParams) -> Sink:
        return sink

    rate = 8000 if encoding in ("mulaw", "alaw") else 16000
    params = StreamParams(encoding=encoding, sample_rate=rate, session_id="bench")
    stream = sink if encoding == "pcm" else await open_transcoded(open_pcm, params)
    size = max(1, int(len(data) * TIMESLICE / seconds))
    for start in range(0, len(data), size):
        await stream.send_audio(data[start : start + size])
        await asyncio.sleep(0)  # a socket's read between frames
    await stream.end_audio()
    async for _ in stream.events():
        pass
    await stream.aclose()
    return sink.bytes


async def measure(encoding: str, data: bytes, seconds: float, sessions: int):
    cpu, wall = time.process_time(), time.perf_counter()
    threads = threading.active_count()
    await asyncio.gather(
        *(one_session(encoding, data, seconds) for _ in range(sessions))
    )
    return (
        (time.process_time() - cpu) / (seconds * sessions),
        time.perf_counter() - wall,
        threads,
    )


def rss() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def idle_sessions(data: bytes, seconds: float, count: int) -> tuple[float, int]:
    """RSS per session of `count` WebM sessions that got their first second."""

    async def open_pcm(params: StreamParams) -> Sink:
        return Sink()

    params = StreamParams(encoding="webm", session_id="idle")
    first_second = data[: int(len(data) / seconds)]
    # One session first: PyAV's libraries and pools load once, not per session.
    warm = await open_transcoded(open_pcm, params)
    await warm.send_audio(first_second)
    await asyncio.sleep(0.5)
    before, threads = rss(), threading.active_count()
    streams = [await open_transcoded(open_pcm, params) for _ in range(count)]
    for stream in streams:
        await stream.send_audio(first_second)
    await asyncio.sleep(1.0)  # every decoder has read it and waits
    grown, added = rss() - before, threading.active_count() - threads
    for stream in [warm, *streams]:
        await stream.aclose()
    return grown / count, added


async def bombs(seconds: float) -> None:
    print(f"{seconds:g} s of silence, one session")
    print(
        f"{'encoding':>9} {'rate':>7} {'layout':>7} {'bytes':>8} {'bytes/s':>8} "
        f"{'ms CPU/s audio':>15}"
    )
    for encoding, form, codec, rate, layout in BOMBS:
        data = encode_silence(form, codec, seconds, rate=rate, layout=layout)
        cpu, _, _ = await measure(encoding, data, seconds, 1)
        print(
            f"{encoding:>9} {rate:>7} {layout:>7} {len(data):>8} "
            f"{len(data) / seconds:>8.0f} {cpu * 1000:>15.2f}"
        )


async def main(seconds: float, sessions: int) -> None:
    # What decoding costs, not the cap on decoders at once (protocol.md §3).
    settings.MAX_DECODER_THREADS = max(settings.MAX_DECODER_THREADS, sessions + 1)
    pcm, rate = read_pcm("two_utterances.wav")
    repeats = int(seconds * rate * 2 / len(pcm)) + 1
    pcm = (pcm * repeats)[: int(seconds * rate) * 2]
    print(f"{seconds:g} s of audio per session, chunks of {TIMESLICE * 1000:g} ms")
    print(
        f"{'encoding':>9} {'bytes':>8} {'ms CPU/s audio':>15} {'x real time':>12} "
        f"{f'ms CPU/s, {sessions} at once':>22}"
    )
    for encoding in ENCODINGS:
        data = pcm if encoding == "pcm" else encode(pcm, rate, encoding)
        alone, wall, _ = await measure(encoding, data, seconds, 1)
        together, _, _ = await measure(encoding, data, seconds, sessions)
        print(
            f"{encoding:>9} {len(data):>8} {alone * 1000:>15.2f} "
            f"{seconds / wall:>12.0f} {together * 1000:>22.2f}"
        )
    webm = encode(pcm, rate, "webm")
    per_session, threads = await idle_sessions(webm, seconds, sessions)
    print(
        f"idle webm sessions: {per_session / 1024:.0f} KiB RSS each, "
        f"{threads} threads for {sessions}"
    )
    frame = os.urandom(65536)
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        g711.to_pcm("mulaw", frame)
    each = (time.perf_counter() - start) / calls
    print(f"G.711 table, one 64 KiB frame: {each * 1e6:.0f} µs")
    await bombs(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sessions", type=int, default=20)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.sessions))
