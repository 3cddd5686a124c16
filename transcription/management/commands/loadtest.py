"""Load a running server with N concurrent streams by the seed-004 protocol."""

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from transcription.audio_files import AudioFileError, read_pcm

FRAME_BYTES = 1024
FIXTURE = Path(settings.BASE_DIR) / "tests" / "fixtures" / "two_utterances.wav"


@dataclass
class StreamResult:
    """What one stream saw."""

    close_code: int | None = None
    error: str = ""
    started: float = 0.0  # monotonic time of the first frame
    first_partial: float | None = None  # seconds from the first frame
    end_to_close: float | None = None  # END_OF_STREAM → close, seconds
    finals: int = 0
    frame_latencies: list[float] = field(default_factory=list)  # echo engine only


@dataclass(frozen=True)
class Plan:
    url: str
    token: str
    audio: bytes
    sample_rate: int
    seconds: float
    fast: bool
    streams: int


async def _stream(plan: Plan, delay: float) -> StreamResult:
    """One stream: audio for plan.seconds (looped), END_OF_STREAM, to the close."""
    await asyncio.sleep(delay)
    result = StreamResult()
    interval = FRAME_BYTES / (plan.sample_rate * 2)
    sent_at: dict[int, float] = {}  # echo: bytes so far -> when that frame left
    headers = {"Authorization": f"Bearer {plan.token}"}
    try:
        async with connect(plan.url, additional_headers=headers) as ws:
            reader = asyncio.create_task(_read(ws, result, sent_at))
            result.started = started = time.monotonic()
            total = 0
            ended = None  # END_OF_STREAM not sent (the server closed first)
            with contextlib.suppress(ConnectionClosed):  # the server closed first
                while time.monotonic() - started < plan.seconds and not reader.done():
                    offset = total % max(len(plan.audio) - FRAME_BYTES, 1)
                    total += FRAME_BYTES
                    sent_at[total] = time.monotonic()
                    await ws.send(plan.audio[offset : offset + FRAME_BYTES])
                    # Even --fast yields, so that the reader sees a close in time.
                    next_at = started + (total / FRAME_BYTES) * interval
                    pause = 0 if plan.fast else next_at - time.monotonic()
                    await asyncio.sleep(max(pause, 0))
                ended = time.monotonic()
                if not reader.done():
                    await ws.send("END_OF_STREAM")
            await reader
            if ended is not None:
                result.end_to_close = time.monotonic() - ended
            result.close_code = ws.close_code
    except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    return result


async def _read(ws, result: StreamResult, sent_at: dict[int, float]) -> None:
    try:
        async for raw in ws:
            message = json.loads(raw)
            now = time.monotonic()
            if "partialTranscript" in message:
                if result.first_partial is None:
                    result.first_partial = now - result.started
                count = message["partialTranscript"].removesuffix(" bytes")
                if count.isdigit() and (sent := sent_at.pop(int(count), None)):
                    result.frame_latencies.append(now - sent)
            elif "transcript" in message:
                result.finals += 1
            elif "error" in message:
                result.error = message["error"]
    except ConnectionClosed:
        pass


async def _run_streams(plan: Plan) -> list[StreamResult]:
    # Starts spread over a second, as clients do not all connect at once.
    spread = 1.0 / max(plan.streams, 1)
    return await asyncio.gather(
        *(_stream(plan, n * spread) for n in range(plan.streams))
    )


def _process_main(plan: Plan) -> list[StreamResult]:
    return asyncio.run(_run_streams(plan))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class Command(BaseCommand):
    help = (
        "Load a running voiceproject server (any engine) with N concurrent "
        "streams of a WAV file, in real time or --fast, over P processes, and print "
        "what they saw: time to the first partial, END_OF_STREAM to close, finals, "
        "errors and closes by code, and frame-to-partial latency when the server "
        "runs the echo engine."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="ws://127.0.0.1:8765/")
        parser.add_argument("--token", default=os.environ.get("VOICEPROJECT_TOKEN"))
        parser.add_argument("--streams", type=int, default=10)
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument(
            "--fast", action="store_true", help="send as fast as the server reads"
        )
        parser.add_argument("--processes", type=int, default=1)
        parser.add_argument("--wav", type=Path, default=FIXTURE)
        parser.add_argument("--language", default="en-US")

    def handle(self, *args, **options):
        if not options["token"]:
            raise CommandError("a token is needed: --token or $VOICEPROJECT_TOKEN")
        try:
            audio = read_pcm(options["wav"])
        except (AudioFileError, OSError) as exc:
            raise CommandError(f"cannot read {options['wav']}: {exc}") from exc
        processes = max(1, min(options["processes"], options["streams"]))
        plans = [
            Plan(
                url=self._url(options, audio.sample_rate),
                token=options["token"],
                audio=audio.data,
                sample_rate=audio.sample_rate,
                seconds=options["seconds"],
                fast=options["fast"],
                streams=options["streams"] // processes
                + (1 if n < options["streams"] % processes else 0),
            )
            for n in range(processes)
        ]
        results = self._run(plans, options["seconds"])
        self._report(results, options)

    @staticmethod
    def _url(options, sample_rate: int) -> str:
        parts = urlsplit(options["url"])
        query = urlencode(
            {
                "language": options["language"],
                "sampleRate": sample_rate,
                "sendPartials": "true",
            }
        )
        return urlunsplit(parts._replace(query=query))

    def _run(self, plans: list[Plan], seconds: float) -> list[StreamResult]:
        context = multiprocessing.get_context("spawn")
        with context.Pool(len(plans)) as pool:
            pending = pool.map_async(_process_main, plans)
            with tqdm(
                total=round(seconds), unit="s", disable=None, file=self.stderr
            ) as bar:
                while not pending.ready():
                    pending.wait(1.0)
                    if bar.n < round(seconds):
                        bar.update(1)
            return [r for chunk in pending.get() for r in chunk]

    def _report(self, results: list[StreamResult], options) -> None:
        closes = Counter(r.close_code for r in results)
        done = [r for r in results if r.close_code == 1000]
        first = [r.first_partial for r in results if r.first_partial is not None]
        ending = [r.end_to_close for r in results if r.end_to_close is not None]
        lines = [
            f"streams: {len(done)} of {len(results)} ended with 1000",
            "closes: "
            + ", ".join(f"{code}: {n}" for code, n in sorted(closes.items(), key=str)),
            f"finals: {sum(r.finals for r in results)}",
        ]
        if first:
            lines.append(
                f"first partial: p50 {statistics.median(first) * 1000:.0f} ms, "
                f"max {max(first) * 1000:.0f} ms"
            )
        if ending:
            lines.append(
                f"END_OF_STREAM → close: p50 {statistics.median(ending):.2f} s, "
                f"max {max(ending):.2f} s"
            )
        latencies = [x for r in results for x in r.frame_latencies]
        if latencies:
            lines.append(
                "frame → partial (echo engine): "
                + ", ".join(
                    f"p{int(q * 100)} {_percentile(latencies, q) * 1000:.1f} ms"
                    for q in (0.5, 0.95, 0.99)
                )
                + f" over {len(latencies)} frames"
            )
        errors = Counter(r.error for r in results if r.error)
        for error, count in errors.most_common(5):
            lines.append(f"error ({count} streams): {error}")
        self.stdout.write("\n".join(lines))
