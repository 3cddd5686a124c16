"""Pure helpers for API tokens: generate, hash, verify. No database here."""

import hashlib
import hmac
import re
import secrets
from urllib.parse import unquote

TOKEN_TAG = "vp_"  # noqa: S105 (a public tag, not a secret)
PREFIX_LENGTH = 12  # "vp_" and nine characters: enough to find a token, useless alone.
# Short-lived grants (accounts.models.SessionGrant) carry the same tag, so that every
# redaction of tokens covers them too, and a longer one that tells them apart.
GRANT_TAG = "vp_grant_"
GRANT_PREFIX_LENGTH = 16  # the tag and seven characters
REDACTED = "[redacted]"
# What may be a raw token (or most of one) inside decoded text such as a URL or a log
# line: the tag and at least eight token characters; or a `token=` with a value.
# Case-insensitive, to err on the side of redacting.
TOKEN_IN_TEXT = re.compile(re.escape(TOKEN_TAG) + r"[A-Za-z0-9_-]{8,}", re.IGNORECASE)
TOKEN_PARAMETER_IN_TEXT = re.compile(
    rf"token=(?!{re.escape(REDACTED)}|&|$)", re.IGNORECASE
)
MAX_DECODINGS = 8


def token_generate() -> str:
    """A new raw token: a tag that secret scanners can match, then 256 random bits
    (never one that starts like a grant: the tag says which table to look in)."""
    while (raw := TOKEN_TAG + secrets.token_urlsafe(32)).startswith(GRANT_TAG):
        pass  # pragma: no cover - one draw in 64**6
    return raw


def token_prefix(raw: str) -> str:
    return raw[:PREFIX_LENGTH]


def grant_generate() -> str:
    """A new raw grant: the grant tag, then 256 random bits."""
    return GRANT_TAG + secrets.token_urlsafe(32)


def is_grant(raw: str) -> bool:
    return raw.startswith(GRANT_TAG)


def grant_prefix(raw: str) -> str:
    return raw[:GRANT_PREFIX_LENGTH]


def token_digest(raw: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (as in django-rest-knox).
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def token_matches(raw: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(raw), digest)


def token_looks_valid(raw: str) -> bool:
    return raw.startswith(TOKEN_TAG) and 20 <= len(raw) <= 200


def percent_decoded(text: str) -> str | None:
    """`text` percent-decoded until it no longer changes; None after MAX_DECODINGS."""
    for _ in range(MAX_DECODINGS):
        decoded = unquote(text)
        if decoded == text:
            return text
        text = decoded
    return None


def text_holds_token(text: str) -> bool:
    """True when `text`, percent-decoded as often as it was encoded, may hold a token.

    Text still encoded after MAX_DECODINGS rounds counts as holding one.
    """
    decoded = percent_decoded(text)
    return decoded is None or bool(
        TOKEN_IN_TEXT.search(decoded) or TOKEN_PARAMETER_IN_TEXT.search(decoded)
    )
