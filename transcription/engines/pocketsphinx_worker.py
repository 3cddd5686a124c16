"""Offline decoding inside a worker process: pocketsphinx with a VAD endpointer.

This module runs in the processes of the offline engine's pool, so it imports no
Django (spawned workers start faster) and returns plain tuples, not engine types.
A worker keeps the state of every session pinned to it, keyed by the engine's session
key, and a few idle `Decoder` objects: building one takes about half a second and
~90 MB, so a session borrows a decoder only while its speaker is talking (one
utterance) and gives it back at the endpoint. The decoder hears an utterance only
once Silero has heard speech in it (`speech_gate`): until then its audio waits, and an
utterance of noise is never decoded (pocketsphinx hears "thank" in pink noise).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from pocketsphinx import Decoder

from transcription.engines.endpointing import (
    BYTES_PER_SECOND,
    EndpointedSession,
    Event,
    Words,
    exit_with_parent,
)
from transcription.engines.speech_gate import GateConfig, SpeechGate, load_model

PARTIAL_EVERY_BYTES = BYTES_PER_SECOND // 4  # a partial hypothesis per 0.25 s of speech
# Audio kept for the decoder while Silero has heard no speech yet: steady noise keeps
# the endpointer in one utterance for as long as it lasts.
MAX_UNHEARD_BYTES = 5 * BYTES_PER_SECOND
IDLE_DECODERS_KEPT = 4

_idle_decoders: list[Decoder] = []
_initial_cmn = ""
_gate = GateConfig()
_sessions: dict[str, Session] = {}


def init_worker(gate: dict[str, Any] | None = None) -> None:
    """Process initializer: leave Ctrl-C to the parent, build one decoder ahead;
    `gate`: `speech_gate.GateConfig`'s fields (its defaults when None)."""
    global _gate
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()
    _gate = GateConfig(**(gate or {}))
    if _gate.enabled:
        load_model()
    _release_decoder(_take_decoder())


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


class Session(EndpointedSession):
    """pocketsphinx: a decoder borrowed while in an utterance, fed once the
    utterance is known to be speech."""

    def __init__(
        self,
        sample_rate: int,
        endpointing_ms: int | None = None,
        word_times: bool = False,
    ):
        super().__init__(sample_rate, endpointing_ms)
        self.word_times = word_times
        self.decoder: Decoder | None = None
        self.unheard_dropped = 0  # bytes of the utterance never given to the decoder
        self.gate = SpeechGate(_gate)
        self.unheard = bytearray()  # the utterance's audio before Silero heard speech
        self.cmn = ""  # carried from one utterance to the next of this speaker
        self.unhyped_bytes = 0
        self.partial = ""

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.end_utt()
            _release_decoder(self.decoder)
            self.decoder = None

    def _start_utterance(self) -> None:
        super()._start_utterance()
        self.decoder = _take_decoder()
        self.decoder.set_cmn(self.cmn or _initial_cmn)
        self.decoder.start_utt()
        self.unhyped_bytes = 0
        self.partial = ""
        self.gate.reset()
        self.unheard.clear()
        self.unheard_dropped = 0

    def _utterance_decoder(self) -> Decoder:
        """The decoder borrowed at the start of the utterance under way."""
        if self.decoder is None:
            raise RuntimeError("no utterance under way")
        return self.decoder

    def _decode(self, speech: bytes) -> None:
        super()._decode(speech)
        if not self.gate.confirmed:
            self.unheard += speech
            if len(self.unheard) > MAX_UNHEARD_BYTES:
                self.unheard_dropped += len(self.unheard) - MAX_UNHEARD_BYTES
                del self.unheard[:-MAX_UNHEARD_BYTES]
            self.gate.add(speech)
            if not self.gate.heard_speech():
                return
            speech, self.unheard = bytes(self.unheard), bytearray()
        decoder = self._utterance_decoder()
        decoder.process_raw(speech)
        self.unhyped_bytes += len(speech)
        if self.partials and self.unhyped_bytes >= PARTIAL_EVERY_BYTES:
            self.unhyped_bytes = 0
            hyp = decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
            if text and text != self.partial:
                self.partial = text
                self._emit(text, is_partial=True)

    def _speech_confirmed(self) -> bool:
        return self.gate.heard_speech()

    def _end_utterance(self) -> None:
        decoder, self.decoder = self._utterance_decoder(), None
        self.unheard.clear()  # never speech: never decoded
        decoder.end_utt()
        hyp = decoder.hyp()
        words = None
        if self.word_times and hyp is not None and hyp.hypstr:
            words = decoded_words(decoder, self.unheard_dropped / BYTES_PER_SECOND)
        self.cmn = decoder.get_cmn()
        _release_decoder(decoder)
        if hyp is not None and hyp.hypstr:
            self._emit(hyp.hypstr, is_partial=False, words=words)


def decoded_words(decoder: Decoder, offset: float) -> Words:
    """The words of the utterance the decoder just ended, with their times from
    the utterance's start (`offset`: its audio the decoder never heard): its
    segmentation less silences, fillers and sentence marks (<s>, <sil>, [NOISE],
    ++UM++), alternative pronunciations named as the word (`read(2)` is `read`)."""
    rate = float(decoder.config["frate"])  # frames per second (100)
    words = []
    for segment in decoder.seg():
        word = segment.word
        if not word or word[0] in "<[+":
            continue
        start = offset + segment.start_frame / rate
        end = offset + (segment.end_frame + 1) / rate  # end_frame is its last frame
        words.append((word.split("(")[0], start, end))
    return tuple(words)


def session_open(
    key: str,
    sample_rate: int,
    language: str = "en-US",
    endpointing_ms: int | None = None,
    word_times: bool = False,
) -> int:
    """Start a session's state here (en-US only); returns this worker's pid;
    `word_times`: its finals carry their words' times."""
    _sessions[key] = Session(sample_rate, endpointing_ms, word_times)
    return os.getpid()


def feed(
    key: str,
    data: bytes,
    last: bool = False,
    partials: bool = True,
    finalize: bool = False,
) -> list[Event]:
    """Decode more audio of a session; `last` flushes it and ends its last utterance,
    `finalize` ends the utterance under way (the stream goes on)."""
    return _sessions[key].feed(data, last, partials, finalize)


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
