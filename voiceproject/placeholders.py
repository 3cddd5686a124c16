"""Secrets left at a placeholder value (deploy/voiceproject.env.example's, change-me…).

Pure (no Django): settings.py refuses to start with any of them, naming the variable.
"""

import re

# Normalized (lower case, letters and digits only), a value starting with one of these
# is a placeholder: deploy/voiceproject.env.example's "change-me-too" and
# "change-me-to-50-random-characters-…", and the usual "replace me", "your secret"…
PLACEHOLDER_PREFIXES = (
    "changeme",
    "changethis",
    "replaceme",
    "replacethis",
    "setme",
    "fillmein",
    "yoursecret",
    "yourtoken",
    "yourpassword",
    "insertyour",
    "putyour",
)
# …and one of these, the whole value.
PLACEHOLDER_VALUES = frozenset(
    {
        "secret",
        "secretkey",
        "djangosecretkey",
        "password",
        "token",
        "metricstoken",
        "placeholder",
        "example",
        "todo",
        "xxx",
        "xxxxxxxx",
        "insecuredevelopmentkeyonlyfordebug",  # settings.py's key for DEBUG alone
    }
)


def is_placeholder(value: str) -> bool:
    """True when a secret is a known placeholder rather than a chosen value."""
    normalized = re.sub(r"[^a-z0-9]", "", value.lower())
    return normalized.startswith(PLACEHOLDER_PREFIXES) or (
        normalized in PLACEHOLDER_VALUES
    )


def placeholder_error(names: list[str]) -> str:
    """The start-up error for the variables in `names` (never their values)."""
    what = "is still a placeholder" if len(names) == 1 else "are still placeholders"
    return (
        f"{' and '.join(names)} {what} (the values in deploy/voiceproject.env.example, "
        "or ones like change-me): set each to a random value, e.g. "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'."
    )
