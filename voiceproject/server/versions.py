"""The rule for patches of third-party libraries: say which versions, refuse others."""

from importlib.metadata import PackageNotFoundError, version

from django.core.exceptions import ImproperlyConfigured
from packaging.specifiers import SpecifierSet

# The versions the project's patches of these libraries were written and tested
# against (pyproject.toml pins the same ranges).
TESTED = {
    "daphne": ">=4.2,<4.3",
    "autobahn": ">=26.11,<27",
    "channels": ">=4.3,<4.4",
    "twisted": ">=26.10,<27",  # websocket_protocol.write_now (relay_speedups)
    "amazon-transcribe": "==0.6.4",  # transcription/engines/aws_compat.py
}


def tested(*names: str) -> dict[str, str]:
    return {name: TESTED[name] for name in names}


def versions_untested(tested: dict[str, str]) -> list[str]:
    """`name installed (tested: spec)` for each installed library outside its range."""
    untested = []
    for name, spec in tested.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed == "missing" or installed not in SpecifierSet(spec):
            untested.append(f"{name} {installed} (tested: {spec})")
    return untested


def require_versions(patch: str, tested: dict[str, str]) -> None:
    """Raise ImproperlyConfigured when a patched library is not a tested version."""
    if untested := versions_untested(tested):
        raise ImproperlyConfigured(
            f"{patch} patches library internals and was written for other versions: "
            f"{', '.join(untested)}. Install the versions pyproject.toml pins."
        )
