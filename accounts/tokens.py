"""Pure helpers for API tokens: generate, hash, verify. No database here."""

import hashlib
import hmac
import secrets

TOKEN_TAG = "vp_"  # noqa: S105 (a public tag, not a secret)
PREFIX_LENGTH = 12  # "vp_" and nine characters: enough to find a token, useless alone.


def token_generate() -> str:
    """A new raw token: a tag that secret scanners can match, then 256 random bits."""
    return TOKEN_TAG + secrets.token_urlsafe(32)


def token_prefix(raw: str) -> str:
    return raw[:PREFIX_LENGTH]


def token_digest(raw: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (as in django-rest-knox).
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def token_matches(raw: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(raw), digest)


def token_looks_valid(raw: str) -> bool:
    return raw.startswith(TOKEN_TAG) and 20 <= len(raw) <= 200
