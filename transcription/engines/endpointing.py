"""The front end of offline decoding in a worker process: resampling and endpointing.

Shared by the worker modules (`offline_worker`, `whisper_worker`): like them it
imports no Django. `EndpointedSession` turns a session's audio, at any sample rate
and in chunks of any size, into 16 kHz utterances with pocketsphinx's VAD endpointer.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading

import numpy as np
import soxr
from pocketsphinx import Endpointer

SAMPLE_RATE = 16000  # what the models are trained on
BYTES_PER_SECOND = SAMPLE_RATE * 2

# (text, is_partial, start seconds, end seconds, utterance number)
Event = tuple[str, bool, float, float, int]


def exit_with_parent() -> None:
    """In a worker process: exit when the parent does, even when it is killed."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    # A parent killed outright never tells its pool to stop: do not outlive it.
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)


class EndpointedSession:
    """One stream's front end: resampler and VAD endpointer, in 16 kHz frames.

    Subclasses decode: `_start_utterance()`, `_decode(speech)` for each piece of
    speech the endpointer passes, `_end_utterance()`, and `_after_feed()` once per
    call; they append events to `self.events`.
    """

    def __init__(self, sample_rate: int):
        self.endpointer = Endpointer(sample_rate=SAMPLE_RATE)
        self.frame_bytes = self.endpointer.frame_bytes
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

    def feed(self, data: bytes, last: bool, partials: bool = True) -> list[Event]:
        self.partials = partials
        self.pending += self._to_16k(data, last)
        frame_bytes = self.frame_bytes
        whole = len(self.pending) - len(self.pending) % frame_bytes
        view = memoryview(self.pending)
        for offset in range(0, whole, frame_bytes):
            self._frame(bytes(view[offset : offset + frame_bytes]))
        view.release()
        del self.pending[:whole]
        if last:
            if self.endpointer.in_speech:
                # The endpointer rejects an empty last frame; one silent sample is
                # inaudible.
                tail = bytes(self.pending[: len(self.pending) & ~1]) or b"\0\0"
                speech = self.endpointer.end_stream(tail)
                if speech:
                    self._decode(speech)
                self._end_utterance()
            self.pending.clear()
        else:
            self._after_feed()
        events, self.events = self.events, []
        return events

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
            return
        if not was_in_speech:
            self._start_utterance()
        self._decode(speech)
        if not self.endpointer.in_speech:
            self._end_utterance()

    def _start_utterance(self) -> None:
        self.utterances += 1
        self.utterance_start = self.endpointer.speech_start
        self.utterance_bytes = 0

    def _decode(self, speech: bytes) -> None:
        self.utterance_bytes += len(speech)

    def _end_utterance(self) -> None:
        raise NotImplementedError

    def _after_feed(self) -> None:
        """Once per call that did not end the stream (partials, for example)."""

    def _emit(self, text: str, *, is_partial: bool) -> None:
        end = self.utterance_start + self.utterance_bytes / BYTES_PER_SECOND
        self.events.append(
            (
                text,
                is_partial,
                round(self.utterance_start, 3),
                round(end, 3),
                self.utterances,
            )
        )
