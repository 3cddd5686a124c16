"""Who may open a session: the client from the handshake, and the refusals in order.

A client that is not authenticated (`Client.auth_refusal`) is refused first and never
recorded: no credentials, bad ones, a browser session from another origin, or any of
these over the failed-attempt limit (nobody can fill the database without a token).
An authenticated client is recorded (its parameters, even bad ones, kept with it),
then checked: parameters, the server shutting down, the process at capacity, the
token's and the user's quotas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.middleware import AUTH_REFUSALS, UNAVAILABLE
from transcription import selectors
from transcription.runtime import shutdown
from transcription.streaming import protocol
from transcription.streaming.access import Grant
from transcription.streaming.protocol import Close

AUTHENTICATED = ("token", "grant", "session")


@dataclasses.dataclass(frozen=True, slots=True)
class Client:
    """Who connects, as the auth middleware put it in the scope."""

    auth_method: str | None
    user: Any  # a User, AnonymousUser or None
    token: Any  # accounts.models.ApiToken or None
    address: str
    grant: Grant | None

    @classmethod
    def from_scope(cls, scope: dict) -> Client:
        client = scope.get("client") or ("", 0)
        return cls(
            auth_method=scope.get("auth_method"),
            user=scope.get("user"),
            token=scope.get("api_token"),
            address=str(client[0] or ""),
            grant=Grant.from_scope(scope),
        )

    @property
    def throttled(self) -> bool:
        return self.auth_method == "throttled"

    @property
    def database_unavailable(self) -> bool:
        """Not authenticated: the database did not answer (try again later)."""
        return self.auth_method == UNAVAILABLE

    def auth_refusal(self) -> Close | None:
        if self.auth_method in AUTHENTICATED:
            return None
        message = AUTH_REFUSALS.get(self.auth_method, AUTH_REFUSALS[None])
        return protocol.refused_auth(message)


async def refusal(
    client: Client, *, bad_parameters: Close | None, has_slot: bool
) -> Close | None:
    """The first reason to refuse this authenticated (and recorded) client's
    session, or None to admit it."""
    if bad_parameters is not None:
        return bad_parameters
    if shutdown.draining():
        return protocol.SHUTTING_DOWN
    if not has_slot:
        return protocol.AT_CAPACITY
    return await _over_quota(client)


async def _over_quota(client: Client) -> Close | None:
    # The counts include this session, which is already recorded: sessions that
    # connect at once may all be refused, never all admitted.
    quotas: list[tuple[str, int, Callable[..., int], dict[str, int]]] = []
    if client.token is not None:
        quotas.append(
            (
                "token",
                settings.MAX_SESSIONS_PER_TOKEN,
                selectors.token_active_session_count,
                {"token_id": client.token.pk},
            )
        )
    if client.user is not None and client.user.is_authenticated:
        quotas.append(
            (
                "user",
                settings.MAX_SESSIONS_PER_USER,
                selectors.user_active_session_count,
                {"user_id": client.user.pk},
            )
        )
    for who, limit, count, kwargs in quotas:
        if await database_sync_to_async(count)(**kwargs) > limit:
            return protocol.over_quota(who, limit)
    return None
