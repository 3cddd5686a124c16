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
import logging
from collections.abc import Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accounts.middleware import ip_of
from transcription import metrics, selectors

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

logger = logging.getLogger(__name__)

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
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response


async def metrics_view(request: HttpRequest) -> HttpResponse:
    # Reads the multiprocess files and the database: off the event loop.
    return await sync_to_async(_metrics)(request)


class DueBatchesCollector(Collector):
    """Batches waiting for a worker, read from the database at scrape time."""

    def describe(self) -> list[Metric]:
        return []  # never a query at registration

    def collect(self) -> Iterator[Metric]:
        try:
            count, oldest = selectors.batches_due_summary(now=timezone.now())
        except Exception:
            logger.warning("metrics: due batches not read", exc_info=True)
            return
        yield GaugeMetricFamily(
            "voiceproject_batches_due",
            "Receiver batches due now and not yet taken by a worker.",
            value=count,
        )
        yield GaugeMetricFamily(
            "voiceproject_oldest_due_batch_seconds",
            "How long the oldest due batch has waited (0: none).",
            value=oldest,
        )


class _ThisProcess(Collector):
    """The process's own registry, when there is no multiprocess directory."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition() -> bytes:
    """The text a scrape gets: the host's series (or this process's) and the
    database's figures."""
    registry = CollectorRegistry()
    if metrics.multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(DueBatchesCollector())
    return generate_latest(registry)
