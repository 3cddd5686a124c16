"""The front end of offline decoding in a worker process: resampling and endpointing.

Shared by the worker modules (`offline_worker`, `whisper_worker`): like them it
imports no Django. `EndpointedSession` turns a session's audio, at any sample rate
and in chunks of any size, into 16 kHz utterances with pocketsphinx's VAD endpointer.

The pause that ends an utterance (`endpointing_ms`, the client's endpointingMs) is
the endpointer's window up to its default, 0.3 s; a longer pause keeps that window and
holds the utterance open for the rest (`hold_frames`): a longer window would also
need that much speech (90% of it) before an utterance starts, and miss short words.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from typing import Any

import numpy as np
import soxr
from pocketsphinx import Endpointer

SAMPLE_RATE = 16000  # what the models are trained on
BYTES_PER_SECOND = SAMPLE_RATE * 2

# (text, is_partial, start seconds, end seconds, utterance number); an onset
# (speech began) is a partial with no text (ONSET), which no decoder emits. A final
# of a session that asked for word times has a sixth item, its `Words`.
Event = tuple[Any, ...]
# Each word of a final and when it was said: (word, start, end), seconds from the
# start of the stream.
Words = tuple[tuple[str, float, float], ...]
ONSET = ""
DEFAULT_WINDOW_MS = 300  # pocketsphinx's own Endpointer window
MIN_WINDOW_MS = 200  # shorter, its 90% rule cannot decide (it refuses)


def exit_with_parent() -> None:
    """In a worker process: exit when the parent does, even when it is killed."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    # A parent killed outright never tells its pool to stop: do not outlive it.
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)


def window_and_hold(endpointing_ms: int | None, frame_ms: float) -> tuple[float, int]:
    """The endpointer's window (seconds) and the frames of silence held after it,
    for a pause of `endpointing_ms` (None: the endpointer's own, 0.3 s)."""
    if endpointing_ms is None:
        return Endpointer.DEFAULT_WINDOW, 0
    window_ms = max(min(endpointing_ms, DEFAULT_WINDOW_MS), MIN_WINDOW_MS)
    return window_ms / 1000, max(round((endpointing_ms - window_ms) / frame_ms), 0)


class EndpointedSession:
    """One stream's front end: resampler and VAD endpointer, in 16 kHz frames.

    Subclasses decode: `_start_utterance()`, `_decode(speech)` for each piece of
    speech the endpointer passes, `_end_utterance()`, and `_after_feed()` once per
    call; they append events to `self.events`.
    """

    def __init__(self, sample_rate: int, endpointing_ms: int | None = None):
        frame_ms = Endpointer(sample_rate=SAMPLE_RATE).frame_length * 1000
        window, self.hold_frames = window_and_hold(endpointing_ms, frame_ms)
        self.endpointer = Endpointer(window=window, sample_rate=SAMPLE_RATE)
        self.frame_bytes = self.endpointer.frame_bytes
        self.held: int | None = None  # frames of silence an utterance is held for
        self.onset_at: float | None = None  # an utterance's onset, not announced yet
        self.resampler = (
            None
            if sample_rate == SAMPLE_RATE
            # float32 inside: soxr's int16 path rounds differently chunk by chunk.
            else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32")
        )
        self.odd_byte = b""  # half a sample, waiting for its other half
        self.pending = bytearray()  # 16 kHz audio short of a whole endpointer frame
        self.partials = True  # the caller wants partials from this call
        self.utterances = 0
        self.utterance_start = 0.0
        self.utterance_bytes = 0
        self.events: list[Event] = []

    def feed(
        self, data: bytes, last: bool, partials: bool = True, finalize: bool = False
    ) -> list[Event]:
        """Events of more audio; `last` ends the stream, `finalize` the utterance
        under way (after this audio)."""
        self.partials = partials
        self.pending += self._to_16k(data, last)
        frame_bytes = self.frame_bytes
        whole = len(self.pending) - len(self.pending) % frame_bytes
        view = memoryview(self.pending)
        for offset in range(0, whole, frame_bytes):
            self._frame(bytes(view[offset : offset + frame_bytes]))
        view.release()
        del self.pending[:whole]
        self._announce_onset()
        if last or finalize:
            self._flush_utterance(whole=last)
        else:
            self._after_feed()
        events, self.events = self.events, []
        return events

    def _flush_utterance(self, *, whole: bool) -> None:
        """End the utterance under way now, with what the endpointer still holds;
        `whole`: also the audio short of a frame (the stream ends). The endpointer
        goes on afterwards (its clock too)."""
        if self.endpointer.in_speech:
            # The endpointer rejects an empty last frame; one silent sample is
            # inaudible.
            tail = bytes(self.pending[: len(self.pending) & ~1]) if whole else b""
            speech = self.endpointer.end_stream(tail or b"\0\0")
            if speech:
                self._decode(speech)
            self._utterance_ended()
        elif self.held is not None:
            self._utterance_ended()
        self.held = None
        if whole:
            self.pending.clear()

    def close(self) -> None:
        """Release what the session holds (its worker forgets it)."""

    def _to_16k(self, data: bytes, last: bool) -> bytes:
        if self.resampler is None:
            return data  # the byte stream is kept whole in `pending`
        data = self.odd_byte + data
        cut = len(data) & ~1
        self.odd_byte = data[cut:]
        samples = np.frombuffer(data[:cut], dtype="<i2").astype(np.float32)
        out = self.resampler.resample_chunk(samples, last=last)
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()

    def _frame(self, frame: bytes) -> None:
        was_in_speech = self.endpointer.in_speech
        speech = self.endpointer.process(frame)
        if speech is None:
            if self.held is not None:
                self.held += 1
                if self.held >= self.hold_frames:  # the whole pause: it ends
                    self.held = None
                    self._utterance_ended()
            return
        if not was_in_speech:
            if self.held is None:
                self._start_utterance()
            else:  # speech again within the pause: the same utterance goes on
                self.held = None
                self._resume_utterance()
        self._decode(speech)
        if not self.endpointer.in_speech:
            if self.hold_frames:
                self.held = 0
            else:
                self._utterance_ended()

    def _resume_utterance(self) -> None:
        """The pause, as silence: the decoder hears it, and the times stay right."""
        heard = self.utterance_start + self.utterance_bytes / BYTES_PER_SECOND
        gap = int((self.endpointer.speech_start - heard) * SAMPLE_RATE)
        if gap > 0:
            self._decode(bytes(2 * gap))

    def _start_utterance(self) -> None:
        self.utterances += 1
        self.utterance_start = self.endpointer.speech_start
        self.utterance_bytes = 0
        self.onset_at = round(self.utterance_start, 3)

    def _announce_onset(self) -> None:
        """The utterance's onset (SpeechStarted), once its speech is confirmed: not
        for noise a speech gate turns down (checked once per call, and at its end)."""
        start = self.onset_at
        if start is not None and self._speech_confirmed():
            self.onset_at = None
            self.events.append((ONSET, True, start, start, self.utterances))

    def _speech_confirmed(self) -> bool:
        """Whether the utterance under way is speech (subclasses with a gate)."""
        return True

    def _utterance_ended(self) -> None:
        self._announce_onset()
        self.onset_at = None  # never confirmed: never announced
        self._end_utterance()

    def _decode(self, speech: bytes) -> None:
        self.utterance_bytes += len(speech)

    def _end_utterance(self) -> None:
        raise NotImplementedError

    def _after_feed(self) -> None:
        """Once per call that did not end the stream (partials, for example)."""

    def _emit(self, text: str, *, is_partial: bool, words: Words | None = None) -> None:
        """An event of the utterance under way; `words` (times from the utterance's
        start) make it the six-item final of a session that asked for them."""
        self._announce_onset()  # words of it come after its onset
        end = self.utterance_start + self.utterance_bytes / BYTES_PER_SECOND
        self.events.append(
            utterance_event(
                text, is_partial, self.utterance_start, end, self.utterances, words
            )
        )


def utterance_event(
    text: str,
    is_partial: bool,
    start: float,
    end: float,
    number: int,
    words: Words | None = None,
) -> Event:
    """The event of an utterance from `start` to `end`; its `words`, timed from its
    start, are moved to the stream's clock (and kept within the utterance)."""
    event: Event = (text, is_partial, round(start, 3), round(end, 3), number)
    if words is None:
        return event
    return (*event, shifted(words, start, end))


def shifted(words: Words, offset: float, limit: float) -> Words:
    """`words` timed from `offset`, none ending past `limit` nor before its start."""
    out = []
    for word, start, end in words:
        start = min(offset + start, limit)
        end = max(min(offset + end, limit), start)
        out.append((word, round(start, 3), round(end, 3)))
    return tuple(out)
