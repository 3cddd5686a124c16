"""WebSocket authentication: an API token (query or Bearer header) or a session cookie.

The middleware only resolves who is calling; it never refuses. The consumer accepts the
handshake and refuses with an `{"error"}` and close 1008, as SPEC §3 requires.
"""

from urllib.parse import parse_qs

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from accounts.services import api_token_authenticate

# What a client refused by authentication is told, by scope["auth_method"].
AUTH_REFUSALS: dict[str | None, str] = {
    None: "Missing token: pass ?token=<API token> or an "
    "'Authorization: Bearer <API token>' header.",
    "bad_token": "Invalid token: it is unknown, revoked or expired.",
    "bad_origin": "Origin not allowed: a logged-in browser session must come "
    "from a page on one of this server's allowed hosts.",
}


def raw_token_from_scope(scope: dict) -> str | None:
    """The token from `?token=` or `Authorization: Bearer …`, if any was sent."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, credential = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and credential.strip():
                return credential.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values else None


def origin_allowed(scope: dict) -> bool:
    """True when the Origin header names one of ALLOWED_HOSTS (for cookie sessions)."""
    for name, value in scope.get("headers", []):
        if name == b"origin":
            origin = value.decode("latin-1")
            host = origin.split("://", 1)[-1]
            domain, _port = split_domain_port(host)
            return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)
    return False


class ApiTokenAuthMiddleware:
    """Sets scope["api_token"], scope["auth_method"] and, when known, scope["user"].

    auth_method is "token" (a usable token was given), "bad_token" (one was given and
    it is not usable), "session" (a logged-in cookie session from an allowed Origin)
    or None.
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        raw = raw_token_from_scope(scope)
        scope["api_token"] = None
        if raw is not None:
            token = await database_sync_to_async(api_token_authenticate)(raw=raw)
            scope["api_token"] = token
            scope["auth_method"] = "token" if token else "bad_token"
            if token:
                scope["user"] = token.user
        else:
            user = scope.get("user")
            if user is None or not user.is_authenticated:
                scope["auth_method"] = None
            else:
                scope["auth_method"] = (
                    "session" if origin_allowed(scope) else "bad_origin"
                )
        return await self.inner(scope, receive, send)


def ApiTokenAuthMiddlewareStack(inner):
    """Cookie session first (so a token can override it), then API tokens."""
    return CookieMiddleware(
        SessionMiddleware(AuthMiddleware(ApiTokenAuthMiddleware(inner)))
    )
