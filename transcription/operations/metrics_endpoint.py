"""`/metrics`: the Prometheus exposition, for METRICS_ALLOWED_IPS or METRICS_TOKEN.

The address judged is the socket's peer (REMOTE_ADDR as daphne sets it), never a
forwarded header. A request that carries X-Forwarded-For or Forwarded came through
a proxy (or pretends to): daphne run with --proxy-headers would have put the
header's first entry, which the client writes, in REMOTE_ADDR; so such a request is
never admitted by address, only with the token. The token travels in
`Authorization: Bearer …` only (a `?token=` URL is redirected away by
TokenOutOfUrlsMiddleware and would reach logs).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from accounts.middleware import ip_of
from transcription.operations import metrics

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def peer_allowed(peer: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether the socket peer `peer` is in `allowed` (addresses and CIDRs)."""
    if not peer:
        return False  # a unix socket: whoever is behind it, the token decides
    ip = ip_of(peer)
    return ip is not None and any(ip in network for network in _networks(allowed))


def token_matches(authorization: str, token: str) -> bool:
    kind, _, credential = authorization.partition(" ")
    if not token or kind.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.strip().encode(), token.encode())


def metrics_allowed(request: HttpRequest) -> bool:
    meta = request.META
    if token_matches(meta.get("HTTP_AUTHORIZATION", ""), settings.METRICS_TOKEN):
        return True
    if "HTTP_X_FORWARDED_FOR" in meta or "HTTP_FORWARDED" in meta:
        return False
    allowed = tuple(settings.METRICS_ALLOWED_IPS)
    return peer_allowed(meta.get("REMOTE_ADDR"), allowed)


def _metrics(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        return HttpResponse(
            "Forbidden: /metrics is served to METRICS_ALLOWED_IPS or with "
            "'Authorization: Bearer <METRICS_TOKEN>'.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    response = HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response


async def metrics_view(request: HttpRequest) -> HttpResponse:
    # Reads the multiprocess files and the database: off the event loop.
    return await sync_to_async(_metrics)(request)
