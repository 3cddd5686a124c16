"""The operations endpoints, served ahead of every other middleware.

`/healthz`, `/readyz` and `/metrics` are answered first in MIDDLEWARE: no host
check (a probe or a scraper may use any address of the host), no HTTPS redirect,
no session, CSRF, login or lockout; they read nothing from the Host header or the
session. Both an async and a sync middleware, so it never changes how the rest
of the stack runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from transcription.operations.health import healthz, readyz
from transcription.operations.metrics_endpoint import metrics_view

ENDPOINTS: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_view,
}


@sync_and_async_middleware
def operations_endpoints(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            view = ENDPOINTS.get(request.path_info)
            if view is not None:
                return await view(request)
            return await get_response(request)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:  # type: ignore[misc]
            view = ENDPOINTS.get(request.path_info)
            if view is not None:
                return async_to_sync(view)(request)
            return get_response(request)

    return middleware
