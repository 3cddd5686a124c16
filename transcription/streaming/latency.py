"""One session's latencies: first event, each final, each reply (kept per session).

Final latency is measured from when the end of the utterance's audio was *received*,
not from when it would have been spoken: a client streaming a file faster than real
time makes the wall clock since the first frame meaningless. The audio received so
far is sampled (bytes, time) at most every SAMPLE_SECONDS, not per frame, and the
time the byte at `event.end` arrived is interpolated between two samples. Compressed
audio has no fixed byte rate: its samples are the PCM its decoder handed the engine
(CountsAudio), when it did. Engines that give no times give no final latency.
Times are the event loop's clock (`loop.time()`), in seconds.
"""

from __future__ import annotations

import array
import bisect
import collections
import statistics

from transcription import metrics
from transcription.engines import TranscriptEvent
from transcription.services.sessions import LatencySummary

SAMPLE_SECONDS = 0.25
MAX_SAMPLES = 512  # about two minutes of audio arrival: more than the engine lags
MAX_OPEN_BATCHES = 32  # batches whose reply is awaited (replies that never come)


class SessionLatency:
    """Bookkeeping for one session; each observation also feeds the histograms."""

    def __init__(self, bytes_per_second: int | None) -> None:
        self.bytes_per_second = bytes_per_second
        self.audio_started: float | None = None
        self.first_event: float | None = None
        # (bytes received in all, when): ascending in both.
        self.samples: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=MAX_SAMPLES
        )
        self.latest = (0, 0.0)  # the last frame, between two samples
        self.finals = array.array("f")
        self.replies = array.array("f")
        self.last_final_of: dict[str, float] = {}  # batch_id → its last final sent

    def on_audio(self, total_bytes: int, now: float) -> None:
        """A frame arrived (compressed audio: PCM was decoded); `total_bytes` is all
        the audio received (decoded) so far."""
        self.latest = (total_bytes, now)
        if not self.samples:
            self.audio_started = now
            self.samples.append((0, now))
        elif now - self.samples[-1][1] >= SAMPLE_SECONDS:
            self.samples.append(self.latest)

    def on_event(self, now: float) -> None:
        """A partial or final came: the first one is the first-partial latency."""
        if self.first_event is None and self.audio_started is not None:
            self.first_event = now
            metrics.FIRST_PARTIAL_SECONDS.observe(now - self.audio_started)

    def on_final(
        self, event: TranscriptEvent, now: float, batch_id: str | None = None
    ) -> None:
        """A final was sent (after it was stored)."""
        self.on_event(now)
        metrics.FINALS.inc()
        if batch_id is not None:
            self.last_final_of.pop(batch_id, None)  # the latest final goes last
            self.last_final_of[batch_id] = now
            if len(self.last_final_of) > MAX_OPEN_BATCHES:
                del self.last_final_of[next(iter(self.last_final_of))]
        received = self._received_at(event.end)
        if received is not None:
            latency = max(now - received, 0.0)
            self.finals.append(latency)
            metrics.FINAL_LATENCY_SECONDS.observe(latency)

    def on_reply(self, batch_id: str, now: float) -> None:
        """A batch's server_response was sent."""
        last_final = self.last_final_of.pop(batch_id, None)
        if last_final is not None:
            latency = now - last_final
            self.replies.append(latency)
            metrics.REPLY_LATENCY_SECONDS.observe(latency)

    def summary(self) -> LatencySummary:
        first = None
        if self.first_event is not None and self.audio_started is not None:
            first = round(self.first_event - self.audio_started, 3)
        return LatencySummary(
            first, *_median_max(self.finals), *_median_max(self.replies)
        )

    def _received_at(self, end: float | None) -> float | None:
        """When the audio up to `end` seconds had arrived (None: cannot tell)."""
        if end is None or not self.bytes_per_second or not self.samples:
            return None
        position = end * self.bytes_per_second
        total, latest_at = self.latest
        if position >= total:
            return latest_at  # everything the engine heard had arrived by then
        samples = self.samples
        if position <= samples[0][0]:
            return samples[0][1]  # older than we remember: a lower bound
        # Later finals end later: forget the samples before this one's.
        i = bisect.bisect_left(samples, position, key=lambda s: s[0])
        for _ in range(i - 1):
            samples.popleft()
        samples_list = (samples[0], samples[1] if len(samples) > 1 else self.latest)
        (b0, t0), (b1, t1) = samples_list
        if b1 <= b0:
            return t1
        return t0 + (t1 - t0) * (position - b0) / (b1 - b0)


def _median_max(values: array.array) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.median(values), 3), round(max(values), 3)
