"""WebSocket authentication: an API token or a grant (Bearer header, the `token`
subprotocol, or the query) or a session cookie.

(And, for HTTP, TokenOutOfUrlsMiddleware: no URL a browser is sent to carries a token.)

The middleware only resolves who is calling; it never refuses. It sets, for the
consumer:

- scope["auth_method"]: "token" (a usable token), "grant" (a usable short-lived grant
  from POST /api/grants: scope["api_token"] is the token that asked for it, if any),
  "session" (a logged-in cookie session from an allowed Origin), or a refusal, the
  keys of AUTH_REFUSALS: None (no credentials), "bad_token" (a token that is not
  usable), "bad_origin" (a cookie session from another origin), "throttled" (any
  of these from an address over the failed-attempt limit; see ApiTokenAuthMiddleware),
  "unavailable" (the database did not answer: the consumer says "try again later").
- scope["client_address"]: the client's address (see client_address).
- scope["api_token"] and scope["user"] (AnonymousUser for every refusal).

The consumer accepts the handshake and refuses with `{"error": AUTH_REFUSALS[method]}`
and close 1008, as docs/protocol.md §2 requires, without storing the attempt.
"""

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from urllib.parse import (
    SplitResult,
    parse_qs,
    parse_qsl,
    urlencode,
    urlsplit,
    urlunsplit,
)

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.request import split_domain_port, validate_host
from django.utils.cache import add_never_cache_headers
from django.utils.http import escape_leading_slashes

from accounts.probes import grant_probe, token_probe
from accounts.services import api_token_authenticate, grant_authenticate
from accounts.throttle import Attempt, auth_failures
from accounts.tokens import (
    is_grant,
    percent_decoded,
    text_holds_token,
    token_looks_valid,
)
from transcription import metrics

logger = logging.getLogger(__name__)

AUTH_REFUSALS: dict[str | None, str] = {
    None: "Missing token: pass ?token=<API token> or an "
    "'Authorization: Bearer <API token>' header.",
    "bad_token": "Invalid token: it is unknown, revoked or expired.",
    "bad_origin": "Origin not allowed: a logged-in browser session must come from a "
    "page of this server (same scheme, host and port) or of a trusted origin.",
    # Says nothing about the token: the same text whatever the attempt held.
    "throttled": "Too many failed authentications from your address: "
    "try again in a minute.",
}

# The database is away (refused, dropped, timed out): the client is told to try
# again later, never given an HTTP 500 at the handshake.
DATABASE_AWAY = (OperationalError, InterfaceError, TimeoutError)
UNAVAILABLE = "unavailable"

DEFAULT_PORTS = {"http": 80, "https": 443}
UNKNOWN_ADDRESS = "unknown"

Origin = tuple[str, str, int]


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


# The subprotocol that carries a token, as Deepgram's clients send it: a browser's
# `new WebSocket(url, ["token", "<token>"])`. The server answers with TOKEN_SUBPROTOCOL
# (the consumer), never with the token.
TOKEN_SUBPROTOCOL = "token"  # noqa: S105 (a protocol name, not a secret)


def subprotocol_token(scope: dict) -> str | None:
    """The token offered as the subprotocol after `token`, if any."""
    offered = [str(name).strip() for name in scope.get("subprotocols") or ()]
    if TOKEN_SUBPROTOCOL in offered:
        index = offered.index(TOKEN_SUBPROTOCOL)
        if index + 1 < len(offered) and offered[index + 1]:
            return offered[index + 1]
    return None


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer …` header, if it is one."""
    if authorization is not None:
        kind, _, credential = authorization.partition(" ")
        if kind.lower() == "bearer" and credential.strip():
            return credential.strip()
    return None


def raw_token_from_scope(scope: dict) -> str | None:
    """The token (or grant) from `Authorization: Bearer …`, the `token` subprotocol
    or `?token=`, in that order, if any was sent."""
    if (raw := bearer_token(_header(scope, b"authorization"))) is not None:
        return raw
    if (raw := subprotocol_token(scope)) is not None:
        return raw
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values else None


# --- Client addresses ----------------------------------------------------------


def ip_of(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `value` names (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _is_loopback(host: str) -> bool:
    return (ip := ip_of(host)) is not None and ip.is_loopback


def _normalized_ip(value: str) -> str | None:
    return str(ip) if (ip := ip_of(value)) is not None else None


def address_of(peer: str | None, forwarded_for: str | None) -> str:
    """The client's address from the socket peer and an X-Forwarded-For header.

    X-Forwarded-For is believed only when the peer is a proxy on this host: loopback
    (127.0.0.0/8, ::1) or a unix socket (no peer). Its last entry is then the address
    that proxy saw (the earlier ones are whatever the client wrote). A server that
    faces the network directly has a non-loopback peer, so a forged header is ignored.
    """
    if peer is None or _is_loopback(peer):
        hops = [hop for hop in (forwarded_for or "").split(",") if hop.strip()]
        if hops and (forwarded := _normalized_ip(hops[-1])):
            return forwarded
    if peer is None:
        return UNKNOWN_ADDRESS
    return _normalized_ip(peer) or peer


def client_address(scope: dict) -> str:
    """The address of a WebSocket client (see address_of); "unknown" without one."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    return address_of(peer, _header(scope, b"x-forwarded-for"))


def request_client_address(request: HttpRequest) -> str | None:
    """The same rule for an HTTP request (django-axes' AXES_CLIENT_IP_CALLABLE).

    None rather than "unknown" (or any other non-address): axes stores it in an IP
    address column, and PostgreSQL's inet refuses anything else.
    """
    address = address_of(
        request.META.get("REMOTE_ADDR") or None,
        request.META.get("HTTP_X_FORWARDED_FOR"),
    )
    return _normalized_ip(address)


# --- Origins ---------------------------------------------------------------------


def parse_origin(value: str) -> Origin | None:
    """(scheme, host, port) of an exact `scheme://host[:port]`; None for anything else.

    A default port is made explicit, so http://host equals http://host:80.
    """
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or "*" in parts.netloc
        or parts.username is not None
        or parts.password is not None
        or parts.path
        or parts.query
        or parts.fragment
    ):
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def own_origin(scope: dict) -> Origin | None:
    """This server's origin as the client reached it: its Host header, with https
    behind a TLS proxy (or when daphne itself serves TLS), else http.

    None when the Host header is missing or not one of ALLOWED_HOSTS (Django checks
    Host for HTTP requests; nothing does for sockets unless we do).
    """
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # as Django's get_host
    if not domain or not validate_host(domain, allowed_hosts):
        return None
    secure = settings.DJANGO_BEHIND_TLS_PROXY or scope.get("scheme") == "wss"
    return parse_origin(f"{'https' if secure else 'http'}://{host}")


def trusted_origins(entries: Iterable[str]) -> set[Origin]:
    """The exact origins of CSRF_TRUSTED_ORIGINS. Wildcard entries (https://*.x.com)
    are left out: a socket that carries a session is accepted from named origins only.
    """
    return {origin for entry in entries if (origin := parse_origin(entry))}


def origin_allowed(scope: dict) -> bool:
    """True when the Origin header is exactly this server's origin or a trusted one.

    A missing Origin, `null`, or anything that is not `scheme://host[:port]` is refused.
    """
    header = _header(scope, b"origin")
    origin = parse_origin(header) if header else None
    if origin is None:
        return False
    return origin == own_origin(scope) or origin in trusted_origins(
        settings.CSRF_TRUSTED_ORIGINS
    )


# --- The middleware -------------------------------------------------------------


class ApiTokenAuthMiddleware:
    """Resolves scope["auth_method"], scope["client_address"], scope["api_token"] and
    scope["user"] (see the module docstring); never refuses by itself.

    Every attempt is charged to its address at once, in one step with the check
    (accounts.throttle), and given back when it authenticates. Within
    AUTH_FAILURES_PER_MINUTE a token is authenticated as usual. Over it, an attempt
    costs its own client, never a valid one behind the same address (a NAT, a proxy):
    a token that could be one (`token_looks_valid`) is checked in a batch with the
    other over-limit attempts of the moment (accounts.probes: one indexed query for
    the batch, no write), and one that matches is authenticated and accepted; a
    cookie session costs its own lookup (the session row, then its user). Whatever
    fails over the limit is "throttled": the session waits
    AUTH_FAILURE_DELAY_SECONDS before it refuses.
    """

    def __init__(self, inner):
        self.inner = inner
        self.with_session = CookieMiddleware(
            SessionMiddleware(_SessionUser(self.resolve))
        )

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope["client_address"] = address = client_address(scope)
        scope["api_token"] = None
        scope["auth_attempt"] = auth_failures.charge(
            address, limit=settings.AUTH_FAILURES_PER_MINUTE
        )
        return await self.with_session(scope, receive, send)

    async def resolve(self, scope, receive, send):
        scope = dict(scope)
        attempt: Attempt = scope.pop("auth_attempt")
        raw = raw_token_from_scope(scope)
        if scope.get("auth_method") == UNAVAILABLE:  # the cookie session: unread
            return await self.unavailable(scope, attempt, receive, send)
        try:
            async with asyncio.timeout(settings.DATABASE_TIMEOUT_SECONDS):
                if raw is not None and is_grant(raw):
                    grant = await authenticate_grant(raw, over_limit=attempt.over_limit)
                    if grant:
                        scope["auth_method"] = "grant"
                        scope["user"] = grant.user
                        scope["api_token"] = grant.token
                    else:
                        scope["auth_method"] = "bad_token"
                elif raw is not None:
                    token = await authenticate_token(raw, over_limit=attempt.over_limit)
                    scope["api_token"] = token
                    if token:
                        scope["auth_method"] = "token"
                        scope["user"] = token.user
                    else:
                        scope["auth_method"] = "bad_token"
                else:
                    user = scope.get("user")
                    if user is None or not user.is_authenticated:
                        scope["auth_method"] = None
                    else:
                        scope["auth_method"] = (
                            "session" if origin_allowed(scope) else "bad_origin"
                        )
        except DATABASE_AWAY:
            return await self.unavailable(scope, attempt, receive, send)
        _settle(scope, attempt)
        return await self.inner(scope, receive, send)

    async def unavailable(self, scope, attempt: Attempt, receive, send):
        """The database did not answer: not the client's failure (its charge is
        given back); the consumer tells it to try again later."""
        auth_failures.succeeded(attempt)
        scope.update(auth_method=UNAVAILABLE, api_token=None, user=AnonymousUser())
        return await self.inner(scope, receive, send)


class _SessionUser(AuthMiddleware):
    """Channels' AuthMiddleware; a database that does not answer leaves the user
    anonymous and the scope "unavailable"."""

    async def resolve_scope(self, scope):
        try:
            async with asyncio.timeout(settings.DATABASE_TIMEOUT_SECONDS):
                await super().resolve_scope(scope)
        except DATABASE_AWAY:
            scope["user"]._wrapped = AnonymousUser()
            scope["auth_method"] = UNAVAILABLE


async def authenticate_token(raw: str, *, over_limit: bool):
    """The usable token for `raw`, or None; over the limit, only after a probe."""
    if not token_looks_valid(raw) or is_grant(raw):
        return None  # nothing the database could match
    if over_limit and not await token_probe.matches(raw):
        return None
    metrics.TOKEN_LOOKUPS.labels(kind="authenticate").inc()
    return await database_sync_to_async(api_token_authenticate)(raw=raw)


async def authenticate_grant(raw: str, *, over_limit: bool):
    """The usable grant for `raw`, or None; over the limit, only after a probe."""
    if not token_looks_valid(raw) or not is_grant(raw):
        return None
    if over_limit and not await grant_probe.matches(raw):
        return None
    metrics.TOKEN_LOOKUPS.labels(kind="authenticate").inc()
    return await database_sync_to_async(grant_authenticate)(raw=raw)


def _settle(scope: dict, attempt: Attempt) -> None:
    """A success gives its charge back; a failure keeps it, and over the limit is
    "throttled". Each failure is in the log: one line each within the limit, and
    the throttle's lines beyond it."""
    method = scope["auth_method"]
    if method in ("token", "grant", "session"):
        auth_failures.succeeded(attempt)
        return
    scope["user"] = AnonymousUser()
    scope["api_token"] = None
    limit = settings.AUTH_FAILURES_PER_MINUTE
    if attempt.over_limit:
        scope["auth_method"] = "throttled"
        auth_failures.refused(attempt, limit=limit)
    else:
        logger.info(
            "WebSocket authentication from %s failed (%s): %d failed attempts of "
            "the %d a minute allowed",
            scope["client_address"],
            method or "missing_token",
            auth_failures.failures(scope["client_address"]),
            limit,
        )


def ApiTokenAuthMiddlewareStack(inner):
    """Address and throttle first, then the cookie session, then API tokens."""
    return ApiTokenAuthMiddleware(inner)


# --- HTTP: tokens out of URLs -----------------------------------------------------


MAX_NESTED_URLS = 4


def url_without_token(url: str, *, depth: int = 0) -> str | None:
    """`url` without the query parameters that carry a token; None if it has none.

    A `token` parameter (any case) goes; so does any other parameter whose value,
    decoded, still holds one (`next=/?token=…`), after an attempt to keep it with the
    token taken out of it.

    A URL without a scheme is a path and stays one: only its path and query are
    rebuilt, and a leading `//` (which urlsplit, and a browser, would read as a
    network location: an open redirect to `//evil.example/`) is written `/%2F`.
    """
    if urlsplit(url).scheme:
        parts = urlsplit(url)
    else:
        rest, _, fragment = url.partition("#")
        path, _, query = rest.partition("?")
        parts = SplitResult("", "", escape_leading_slashes(path), query, fragment)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept: list[tuple[str, str]] = []
    for key, value in pairs:
        # The pair as it will be written back: `/token=/` reads as a token too.
        written = urlencode([(key, value)], safe="/")
        if (
            key.lower() == "token"
            or text_holds_token(key)
            or (key.lower().endswith("token") and text_holds_token(written))
        ):
            continue
        if text_holds_token(value):
            # Keep what the value says without the token: `next=/?a=1&token=…`
            # becomes `next=/?a=1` (the value decoded, however often it was encoded).
            decoded = percent_decoded(value) or ""
            nested = "?" in decoded and depth < MAX_NESTED_URLS
            cleaned = url_without_token(decoded, depth=depth + 1) if nested else None
            if cleaned is None or text_holds_token(cleaned):
                continue
            value = cleaned
        kept.append((key, value))
    if kept == pairs:
        return None
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/")))


class TokenOutOfUrlsMiddleware:
    """Keeps API tokens out of browser URLs (address bar, history, Referer, the login
    page's `next`): a request whose URL carries a token is redirected to the same URL
    without it, and a redirect that would carry one has it taken out.

    HTTP pages take no token in the URL: the browser has its session, programs send
    `Authorization: Bearer`. (The request itself still reaches the access log, which
    redacts it: voiceproject.server.access_log.)
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        clean = url_without_token(request.get_full_path())
        if clean is not None:
            response: HttpResponse = HttpResponseRedirect(clean)
            if request.method not in ("GET", "HEAD"):
                response.status_code = 307  # the same method and body, once more
            add_never_cache_headers(response)
            return response
        response = self.get_response(request)
        location = response.get("Location")
        if location and (clean := url_without_token(location)) is not None:
            response["Location"] = clean
        return response
