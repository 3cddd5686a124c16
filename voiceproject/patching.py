"""The rule for patches of third-party libraries: say which versions, refuse others."""

from importlib.metadata import PackageNotFoundError, version

from django.core.exceptions import ImproperlyConfigured
from packaging.specifiers import SpecifierSet


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
