"""Offline neural text-to-speech: Piper (piper-tts, ONNX Runtime), MP3 by lameenc.

A reply is spoken sentence by sentence: Piper's phonemizer (its own espeak-ng, under
its own lock) splits the text, and each sentence is one ONNX run on the "tts" pool,
encoded to MP3 at once, so the first sentence's audio is ready after one sentence's
synthesis. MP3 frames join cleanly: `synthesize` returns the pieces concatenated.

A language with no bundled Piper voice (voices.py) is spoken by espeak-ng's voice
for it (EspeakSpeech).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from django.conf import settings

from transcription.executors import run_blocking
from transcription.voice_loop.tts import TtsError
from transcription.voice_loop.tts.espeak import EspeakSpeech, mp3_encode
from transcription.voice_loop.tts.voices import BundledVoice, bundled_voice, voice_files

if TYPE_CHECKING:
    from piper import PiperVoice


def load_voice(voice: BundledVoice, threads: int) -> PiperVoice:
    """Blocking: the checked voice in an ONNX session of `threads` threads.

    Not PiperVoice.load: it leaves ONNX Runtime a thread per core, and the "tts"
    pool already runs TTS_THREADS syntheses side by side."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    model, config = voice_files(voice)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        voice_config = PiperConfig.from_dict(
            json.loads(config.read_text(encoding="utf-8"))
        )
    except Exception as error:  # ONNX Runtime raises its own classes
        raise TtsError(
            f"Piper could not load {model.name} ({error.__class__.__name__}): "
            f"reinstall '{voice.distribution}'."
        ) from error
    return PiperVoice(session=session, config=voice_config)


def _next_piece(sentences: Iterator[bytes]) -> bytes | None:
    return next(sentences, None)


class PiperSpeech:
    """TTS_ENGINE=offline (or piper): PIPER_CPU_THREADS threads per synthesis."""

    name = "piper"

    def __init__(self) -> None:
        self.threads = max(1, settings.PIPER_CPU_THREADS)
        self.fallback = EspeakSpeech()
        self._voices: dict[str, PiperVoice] = {}
        self._lock = threading.Lock()

    def voice(self, voice: BundledVoice) -> PiperVoice:
        """Blocking: the loaded voice (loaded once per process)."""
        with self._lock:
            loaded = self._voices.get(voice.language)
            if loaded is None:
                loaded = self._voices[voice.language] = load_voice(voice, self.threads)
            return loaded

    def _sentences(self, bundled: BundledVoice, text: str) -> Iterator[bytes]:
        """Blocking generator: each step synthesizes one sentence (MP3)."""
        piper_voice = self.voice(bundled)
        rate = piper_voice.config.sample_rate
        for chunk in piper_voice.synthesize(text):
            yield mp3_encode(chunk.audio_int16_bytes, rate)

    async def synthesize_sentences(
        self, text: str, *, language: str
    ) -> AsyncIterator[bytes]:
        """One MP3 per sentence, each made on the "tts" pool as it is asked for."""
        bundled = bundled_voice(language)
        if bundled is None:
            async for piece in self.fallback.synthesize_sentences(
                text, language=language
            ):
                yield piece
            return
        sentences = self._sentences(bundled, text)
        spoken = False
        # No close on cancel: a step may still run on the pool, and the generator
        # holds nothing to release (garbage collection ends it).
        while (mp3 := await run_blocking("tts", _next_piece, sentences)) is not None:
            spoken = True
            yield mp3
        if not spoken:
            raise TtsError("Piper produced no audio.")

    async def synthesize(self, text: str, *, language: str) -> bytes:
        pieces = [p async for p in self.synthesize_sentences(text, language=language)]
        return b"".join(pieces)
