"""Offline text-to-speech: espeak-ng from the espeakng-loader wheel, MP3 by lameenc.

The wheel ships the shared library and its voice data, so no system package is
needed. espeak-ng keeps global state and is not thread-safe: one lock serializes
every synthesis, which runs on the "tts" thread pool so the event loop never waits
on it (and never holds up the loop's default executor while it waits for the lock).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import AsyncIterator

import espeakng_loader
import lameenc
from django.conf import settings

from transcription.executors import run_blocking
from transcription.voice_loop.tts import TtsError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_MP3_KBPS = 48
_DEFAULT_VOICE = "en-us"
# espeak-ng's voice for a session language where its name is not the language tag
# or its first part (ESPEAK_VOICES adds or overrides entries).
ESPEAK_VOICES = {
    "en-gb": "en",
    "en-au": "en",
    "en-in": "en",
    "en-029": "en-029",
    "es-us": "es-419",
    "es-mx": "es-419",
    "pt-br": "pt-br",
    "pt-pt": "pt",
    "fr-be": "fr-be",
    "fr-ch": "fr-ch",
    "zh-cn": "cmn",
    "zh-tw": "cmn",
    "zh-hk": "yue",
}


def voice_names(language: str) -> list[str]:
    """The espeak-ng voices to try for a session language, best first."""
    tag = language.lower()
    table = ESPEAK_VOICES | {
        key.lower(): value for key, value in settings.ESPEAK_VOICES.items()
    }
    names = [table[tag]] if tag in table else []
    return [*names, tag, tag.split("-")[0], _DEFAULT_VOICE]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """The process's one espeak-ng library, used under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise TtsError("espeak-ng failed to initialize.")
        self._chunks: list[bytes] = []
        # Kept on the instance: ctypes must not free the callback while C holds it.
        self._callback = _SynthCallback(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, samples: int, _events) -> int:
        if wav and samples > 0:
            self._chunks.append(ctypes.string_at(wav, samples * 2))
        return 0

    def _set_voice(self, language: str) -> None:
        for name in voice_names(language):
            if self.lib.espeak_SetVoiceByName(name.encode()) == 0:
                return
        raise TtsError(f"espeak-ng has no voice for {language!r}.")

    def pcm(self, text: str, language: str) -> bytes:
        """16-bit mono PCM at self.sample_rate."""
        encoded = text.encode("utf-8")
        with self.lock:
            self._chunks = []
            self._set_voice(language)
            status = self.lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != 0:
                raise TtsError(f"espeak-ng could not speak (error {status}).")
            self.lib.espeak_Synchronize()
            return b"".join(self._chunks)


_espeak: _Espeak | None = None
_espeak_lock = threading.Lock()


def _library() -> _Espeak:
    global _espeak
    with _espeak_lock:
        if _espeak is None:
            _espeak = _Espeak()
        return _espeak


def mp3_encode(pcm: bytes, sample_rate: int) -> bytes:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(_MP3_KBPS)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(5)
    return bytes(encoder.encode(pcm) + encoder.flush())


def speak_mp3(text: str, language: str = "en-US") -> bytes:
    """Blocking: the MP3 of `text` (call it off the event loop)."""
    espeak = _library()
    pcm = espeak.pcm(text, language)
    if not pcm:
        raise TtsError("espeak-ng produced no audio.")
    return mp3_encode(pcm, espeak.sample_rate)


class EspeakSpeech:
    """TTS_ENGINE=espeak; the offline voice for languages Piper has no voice for."""

    name = "espeak"

    async def synthesize_sentences(
        self, text: str, *, language: str
    ) -> AsyncIterator[bytes]:
        """The whole reply as one piece: espeak-ng speaks five sentences in ~0.05 s."""
        yield await self.synthesize(text, language=language)

    async def synthesize(self, text: str, *, language: str) -> bytes:
        return await run_blocking("tts", speak_mp3, text, language)
