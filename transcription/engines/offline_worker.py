"""Offline decoding inside a worker process: pocketsphinx with a VAD endpointer.

This module runs in the processes of the offline engine's pool, so it imports no
Django (spawned workers start faster) and returns plain tuples, not engine types.
A worker keeps the state of every session pinned to it, keyed by the engine's session
key, and a few idle `Decoder` objects: building one takes about half a second and
~90 MB, so a session borrows a decoder only while its speaker is talking (one
utterance) and gives it back at the endpoint.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

import numpy as np
import soxr
from pocketsphinx import Decoder, Endpointer

SAMPLE_RATE = 16000  # what the en-US model is trained on
BYTES_PER_SECOND = SAMPLE_RATE * 2
PARTIAL_EVERY_BYTES = BYTES_PER_SECOND // 4  # a partial hypothesis per 0.25 s of speech
IDLE_DECODERS_KEPT = 4

# (text, is_partial, start seconds, end seconds, utterance number)
Event = tuple[str, bool, float, float, int]

_idle_decoders: list[Decoder] = []
_initial_cmn = ""
_sessions: dict[str, Session] = {}


def init_worker() -> None:
    """Process initializer: leave Ctrl-C to the parent, build one decoder ahead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _release_decoder(_take_decoder())


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    # A parent killed outright never tells its pool to stop: do not outlive it.
    multiprocessing.connection.wait([parent.sentinel])
    os._exit(0)


def _take_decoder() -> Decoder:
    global _initial_cmn
    if _idle_decoders:
        return _idle_decoders.pop()
    decoder = Decoder(loglevel="FATAL")
    _initial_cmn = _initial_cmn or decoder.get_cmn()
    return decoder


def _release_decoder(decoder: Decoder) -> None:
    if len(_idle_decoders) < IDLE_DECODERS_KEPT:
        _idle_decoders.append(decoder)


class Session:
    """One stream: resampler, endpointer, and a decoder while in an utterance."""

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
        self.decoder: Decoder | None = None
        self.cmn = ""  # carried from one utterance to the next of this speaker
        self.utterances = 0
        self.utterance_start = 0.0
        self.utterance_bytes = 0
        self.unhyped_bytes = 0
        self.partial = ""
        self.events: list[Event] = []

    def feed(self, data: bytes, last: bool) -> list[Event]:
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
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.end_utt()
            _release_decoder(self.decoder)
            self.decoder = None

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
        self.decoder = _take_decoder()
        self.decoder.set_cmn(self.cmn or _initial_cmn)
        self.decoder.start_utt()
        self.utterances += 1
        self.utterance_start = self.endpointer.speech_start
        self.utterance_bytes = self.unhyped_bytes = 0
        self.partial = ""

    def _utterance_decoder(self) -> Decoder:
        """The decoder borrowed at the start of the utterance under way."""
        if self.decoder is None:
            raise RuntimeError("no utterance under way")
        return self.decoder

    def _decode(self, speech: bytes) -> None:
        decoder = self._utterance_decoder()
        decoder.process_raw(speech)
        self.utterance_bytes += len(speech)
        self.unhyped_bytes += len(speech)
        if self.unhyped_bytes >= PARTIAL_EVERY_BYTES:
            self.unhyped_bytes = 0
            hyp = decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
            if text and text != self.partial:
                self.partial = text
                self._emit(text, is_partial=True)

    def _end_utterance(self) -> None:
        decoder, self.decoder = self._utterance_decoder(), None
        decoder.end_utt()
        hyp = decoder.hyp()
        self.cmn = decoder.get_cmn()
        _release_decoder(decoder)
        if hyp is not None and hyp.hypstr:
            self._emit(hyp.hypstr, is_partial=False)

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


def session_open(key: str, sample_rate: int) -> int:
    """Start a session's state here; returns this worker's pid."""
    _sessions[key] = Session(sample_rate)
    return os.getpid()


def feed(key: str, data: bytes, last: bool = False) -> list[Event]:
    """Decode more audio of a session; `last` flushes it and ends its last utterance."""
    return _sessions[key].feed(data, last)


def session_close(key: str) -> None:
    """Forget a session (it may be unknown: its open may have been cancelled)."""
    session = _sessions.pop(key, None)
    if session is not None:
        session.close()


def stats() -> dict[str, int]:
    """What this worker holds, for tests and benchmarks."""
    return {
        "pid": os.getpid(),
        "sessions": len(_sessions),
        "idle_decoders": len(_idle_decoders),
    }
