"""HTTP API authentication (Authorization: Bearer) and POST /api/grants.

Programs call the HTTP API with `Authorization: Bearer <API token>`; every attempt is
charged to its address like a WebSocket's (accounts.throttle), given back when it
authenticates, and over AUTH_FAILURES_PER_MINUTE a failing one waits
AUTH_FAILURE_DELAY_SECONDS and gets a 429. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from accounts.middleware import (
    AUTH_REFUSALS,
    DATABASE_AWAY,
    address_of,
    authenticate_token,
    bearer_token,
)
from accounts.models import ApiToken
from accounts.services import grant_create
from accounts.throttle import auth_failures

logger = logging.getLogger(__name__)

MISSING_BEARER = (
    "Missing credentials: send an 'Authorization: Bearer <API token>' header."
)


def api_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JsonResponse:
    """An error as OpenAI's API writes it (its clients raise on the status)."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    response = JsonResponse(body, status=status)
    add_never_cache_headers(response)
    return response


@dataclasses.dataclass(frozen=True)
class Refused(Exception):
    """Authentication failed: answer with `response`."""

    response: JsonResponse


def request_address(request: HttpRequest) -> str:
    return address_of(
        request.META.get("REMOTE_ADDR") or None,
        request.META.get("HTTP_X_FORWARDED_FOR"),
    )


async def bearer_authenticate(request: HttpRequest, *, required: bool = True):
    """The usable API token of the request's Bearer header; raises Refused (401,
    429 over the limit, 503 without a database). Without a header: None when not
    `required` (the caller tries the browser session), else Refused 401."""
    raw = bearer_token(request.headers.get("Authorization"))
    if raw is None and not required:
        return None
    address = request_address(request)
    limit = settings.AUTH_FAILURES_PER_MINUTE
    attempt = auth_failures.charge(address, limit=limit)
    token: ApiToken | None = None
    try:
        if raw is not None:
            async with asyncio.timeout(settings.DATABASE_TIMEOUT_SECONDS):
                token = await authenticate_token(raw, over_limit=attempt.over_limit)
    except DATABASE_AWAY:
        auth_failures.succeeded(attempt)
        raise Refused(
            api_error(
                503,
                "The database is unavailable: try again later.",
                type="server_error",
                code="unavailable",
            )
        ) from None
    if token is not None:
        auth_failures.succeeded(attempt)
        return token
    if attempt.over_limit:
        auth_failures.refused(attempt, limit=limit)
        await asyncio.sleep(settings.AUTH_FAILURE_DELAY_SECONDS)
        raise Refused(
            api_error(429, AUTH_REFUSALS["throttled"], code="rate_limit_exceeded")
        )
    logger.info(
        "HTTP API authentication from %s failed (%s): %d failed attempts of the "
        "%d a minute allowed",
        address,
        "bad_token" if raw is not None else "missing_token",
        auth_failures.failures(address),
        limit,
    )
    message = AUTH_REFUSALS["bad_token"] if raw is not None else MISSING_BEARER
    raise Refused(
        api_error(401, message, type="invalid_request_error", code="invalid_api_key")
    )


def _no_view(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never run
    raise NotImplementedError


def _csrf_refusal(request: HttpRequest) -> JsonResponse | None:
    """Django's own CSRF check (token and Origin) for a cookie-authenticated call."""
    check = CsrfViewMiddleware(lambda _request: None)  # type: ignore[arg-type]
    refused = check.process_view(request, _no_view, (), {})
    if refused is None:
        return None
    return api_error(
        403,
        "CSRF check failed: a browser session must send the X-CSRFToken header "
        "from this server's page.",
        code="csrf_failed",
    )


@csrf_exempt  # a Bearer call needs none; a cookie one is checked below
async def grant_create_view(request: HttpRequest) -> JsonResponse:
    """POST /api/grants: a short-lived grant that only opens sessions.

    Authenticated by a Bearer API token, or by a logged-in browser session (with its
    CSRF token). Answers `{"token": "vp_grant_…", "expires_in": GRANT_SECONDS}`; the
    raw grant is in this response only (no-store).
    """
    if request.method != "POST":
        response = api_error(405, "Use POST.", code="method_not_allowed")
        response["Allow"] = "POST"
        return response
    try:
        token = await bearer_authenticate(request, required=False)
    except Refused as refused:
        return refused.response
    if token is not None:
        user = token.user
    else:
        user = await request.auser()
        if not user.is_authenticated:
            try:
                await bearer_authenticate(request)  # charged and refused as one
            except Refused as refused:
                return refused.response
        if (csrf := _csrf_refusal(request)) is not None:
            return csrf
    grant, raw = await database_sync_to_async(grant_create)(user=user, token=token)
    logger.info("grant %s made for user %s", grant.pk, user.pk)
    response = JsonResponse({"token": raw, "expires_in": int(settings.GRANT_SECONDS)})
    response["Cache-Control"] = "no-store"
    return response
