"""Is there speech? A text with words, an utterance Silero hears, Whisper's rule.

Noise, hum and music must produce no transcript (issue 21 item 5). Three checks, from
the cheapest:

- `has_words(text)`: a transcript with no letter or digit (`". . ."`, `"-"`, `"…"`) is
  no transcript. Every engine's partials and finals pass it (the session's relay).
- `SpeechGate`: Silero's VAD (the `silero_vad_v6.onnx` that ships in faster-whisper's
  wheel, run by onnxruntime on one thread) scored over an utterance's audio as it
  comes. pocketsphinx's endpointer takes steady noise for speech; Silero does not. The
  offline decoders ask `heard_speech()` before each decode, so an utterance without a
  run of `min_speech_seconds` of speech costs the VAD only (~0.002 CPU s per second of
  audio) and gives nothing.
- `whisper_heard_speech()`: Whisper's own rule (faster-whisper's `no_speech_threshold`
  with `log_prob_threshold`) and its loop detector (`compression_ratio_threshold`).

Imports no Django: it runs in the decoding processes.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples Silero scores at a time (32 ms)
CONTEXT = 64  # samples of the previous window it sees with each one
STATE_SHAPE = (1, 1, 128)
MODEL_FILE = "silero_vad_v6.onnx"


def has_words(text: str) -> bool:
    """True when `text` holds a letter or a digit of any script."""
    return any(char.isalnum() for char in text)


@dataclass(frozen=True, slots=True)
class GateConfig:
    """SPEECH_GATE, SPEECH_GATE_THRESHOLD, SPEECH_GATE_MIN_SPEECH_MS (in seconds)."""

    enabled: bool = True
    threshold: float = 0.5
    min_speech_seconds: float = 0.15

    @property
    def min_windows(self) -> int:
        return max(1, round(self.min_speech_seconds * SAMPLE_RATE / WINDOW))


@dataclass(frozen=True, slots=True)
class WhisperThresholds:
    """WHISPER_NO_SPEECH_THRESHOLD, WHISPER_LOG_PROB_THRESHOLD,
    WHISPER_COMPRESSION_RATIO_THRESHOLD: faster-whisper's defaults."""

    no_speech: float = 0.6
    log_prob: float = -1.0
    compression_ratio: float = 2.4


def whisper_heard_speech(
    no_speech_prob: float, avg_logprob: float, thresholds: WhisperThresholds
) -> bool:
    """Whisper's rule for "nobody spoke": a high no-speech probability *and* a low
    confidence (either alone is common in real speech)."""
    return not (
        no_speech_prob > thresholds.no_speech and avg_logprob < thresholds.log_prob
    )


def compression_ratio(text: str) -> float:
    """How well `text` compresses (zlib): above ~2.4 it is a loop, not speech."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def model_path() -> Path:
    """Silero's weights in faster-whisper's wheel, found without importing it (the
    pocketsphinx processes need not load CTranslate2)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("faster-whisper is not installed: no Silero VAD model")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / MODEL_FILE
    if not path.is_file():
        raise RuntimeError(f"Silero VAD model missing: {path}")
    return path


@functools.cache
def _model() -> Any:
    """One onnxruntime session per process; the state lives in each SpeechGate."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One thread: a decoding process has one core (OFFLINE_DECODER_PROCESSES).
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(
        str(model_path()), providers=["CPUExecutionProvider"], sess_options=options
    )


def load_model() -> None:
    """Load Silero now (a worker's start-up), so that a broken install fails there."""
    _model()


class SpeechGate:
    """Silero over one utterance's 16 kHz audio, scored lazily, as one stream.

    `add()` the utterance's audio as it comes; `heard_speech()` scores what is new
    (whole windows, the model's state and context carried over, so that scoring in
    pieces equals scoring the whole) and says whether a run of `min_windows` windows
    at or above the threshold has been heard. Once it has, the rest is not scored.
    `reset()` at each new utterance. Disabled, it hears speech in anything.
    """

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.windows_scored = 0
        self.reset()

    def reset(self) -> None:
        self.confirmed = not self.config.enabled
        self._pending = bytearray()
        self._run = 0
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def add(self, pcm: bytes) -> None:
        """More of the utterance: 16-bit little-endian mono at 16 kHz."""
        if not self.confirmed:
            self._pending += pcm

    def heard_speech(self) -> bool:
        if not self.confirmed:
            self._score()
        return self.confirmed

    def _score(self) -> None:
        whole = len(self._pending) - len(self._pending) % (WINDOW * 2)
        if not whole:
            return
        samples = np.frombuffer(bytes(self._pending[:whole]), dtype="<i2")
        del self._pending[:whole]
        windows = (samples.astype(np.float32) / 32768.0).reshape(-1, WINDOW)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._h, self._c = _model().run(
            None,
            {
                "input": np.concatenate([contexts, windows], axis=1),
                "h": self._h,
                "c": self._c,
            },
        )
        threshold, needed = self.config.threshold, self.config.min_windows
        for prob in np.asarray(probs).reshape(-1):
            self.windows_scored += 1  # up to the deciding one (tests, benchmarks)
            self._run = self._run + 1 if prob >= threshold else 0
            if self._run >= needed:
                self.confirmed = True
                self._pending.clear()
                return
