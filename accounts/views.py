"""Browser pages for a logged-in user's own API tokens (list, create, revoke)."""

import datetime as dt
import math

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors, services

EXPIRY_CHOICES = [
    ("", "Never"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]


class AuthenticatedHttpRequest(HttpRequest):
    """A request past @login_required: its user is signed in (for type checkers)."""

    user: User


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False
    )

    def expires_at(self) -> dt.datetime | None:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + dt.timedelta(days=days) if days else None


def websocket_base_url(request: HttpRequest) -> str:
    """This server's WebSocket root as a client outside the browser would use it."""
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}/"


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's tokens; a POST creates one and shows its raw value this once."""
    created = raw = None
    if request.method == "POST":
        form = TokenCreateForm(request.POST)
        if form.is_valid():
            try:
                created, raw = services.api_token_create(
                    user=request.user,
                    name=form.cleaned_data["name"].strip() or "default",
                    expires_at=form.expires_at(),
                )
            except services.TokenLimitReached as error:
                form.add_error(None, str(error))
            else:
                form = TokenCreateForm()
    else:
        form = TokenCreateForm()
    # The raw token is rendered in this response only (never stored or redirected
    # through the session), so a reload does not show it again.
    return render(
        request,
        "accounts/tokens.html",
        {
            "form": form,
            "tokens": selectors.api_token_list(username=request.user.get_username()),
            "created": created,
            "raw_token": raw,
            "ws_url": websocket_base_url(request),
            "nav": "tokens",
        },
    )


@login_required
@require_POST
def token_revoke(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's own tokens; anyone else's is a 404."""
    token = selectors.api_token_get_own(user=request.user, token_id=token_id)
    if token is None:
        raise Http404("No such token.")
    services.api_token_revoke(token=token)
    messages.success(request, f"Token “{token.name}” ({token.prefix}…) is revoked.")
    return redirect("accounts:tokens")


def login_locked_out(
    request: HttpRequest, original_response=None, credentials=None
) -> HttpResponse:
    """django-axes' answer to a locked-out login (AXES_LOCKOUT_CALLABLE): status 429."""
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return render(
        request,
        "registration/locked_out.html",
        {"failure_limit": settings.AXES_FAILURE_LIMIT, "cooloff_minutes": minutes},
        status=429,
    )
