"""Running sessions lose their access within seconds of a revocation (SPEC §3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Grant:
    """What lets a session run: its API token, its user, its Django session."""

    token_id: int | None
    user_id: int | None
    # The session key is a credential (the cookie's value): never in a log line.
    session_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> Grant | None:
        """The grant of an accepted connection (ApiTokenAuthMiddleware's scope)."""
        method = scope.get("auth_method")
        if method == "token":
            token = scope["api_token"]
            return cls(token_id=token.pk, user_id=token.user_id)
        if method == "session":
            session = scope.get("session")
            key = session.session_key if session is not None else None
            return cls(token_id=None, user_id=scope["user"].pk, session_key=key)
        return None
