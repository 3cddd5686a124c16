"""Admin for API tokens: create (raw shown once), revoke, rotate, usage; else read-only.

The raw token exists only in the response to the request that made it: it is never
stored, put in a message (the messages framework keeps those in a cookie or the
session), logged, or shown on any other page.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import construct_change_message
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_cache_control

from accounts.models import ApiToken, SessionGrant
from accounts.selectors import api_token_list
from accounts.services import (
    TokenLimitReached,
    api_token_check_limit,
    api_token_create,
    api_token_revoke,
    api_token_rotate,
)


def may_mint_tokens_for(request: HttpRequest, user) -> bool:
    """Who may see a new raw token of `user` (create one, or rotate one): a superuser,
    or `user` themselves. Other staff, whatever their permissions, may not: the raw
    token would let them stream as that user (a superuser, say)."""
    return request.user.is_superuser or user.pk == request.user.pk


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name", "expires_at"]

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at

    def clean(self):
        cleaned = super().clean() or {}
        if (user := cleaned.get("user")) is not None:
            try:
                api_token_check_limit(user=user)
            except TokenLimitReached as error:
                raise forms.ValidationError(str(error)) from None
        return cleaned


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(status, status) for status in ApiToken.STATUSES]

    def queryset(self, request, queryset):
        if self.value() in ApiToken.STATUSES:
            return queryset.with_status(self.value())
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "user",
        "status",
        "created_at",
        "last_used_at",
        "expires_at",
        "session_count",
        "audio_minutes",
    ]
    form = ApiTokenAddForm
    list_filter = [StatusFilter, "created_at", "last_used_at"]
    search_fields = ["prefix", "name", "user__username", "user__email"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["user"]
    actions = ["revoke_selected"]
    add_fields = ["user", "name", "expires_at"]
    change_fields = [
        "prefix",
        "name",
        "user",
        "status",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "session_count",
        "audio_minutes",
    ]

    def get_queryset(self, request):
        return api_token_list()

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request, obj=None):
        # Read-only after creation: a token is revoked or rotated, never edited.
        return [] if obj is None else self.change_fields

    @admin.display(description="sessions", ordering="session_count")
    def session_count(self, obj: ApiToken) -> int:
        return getattr(obj, "session_count", 0)

    @admin.display(description="audio minutes", ordering="audio_seconds_total")
    def audio_minutes(self, obj: ApiToken) -> float:
        return round(getattr(obj, "audio_seconds_total", 0.0) / 60, 1)

    # --- creation: the raw token goes into this one response only -------------

    def add_view(self, request: HttpRequest, form_url="", extra_context=None):
        if request.method == "POST" and self.has_add_permission(request):
            form = self.get_form(request)(request.POST)
            if form.is_valid():
                if not may_mint_tokens_for(request, form.cleaned_data["user"]):
                    raise PermissionDenied
                try:
                    token, raw = api_token_create(
                        user=form.cleaned_data["user"],
                        name=form.cleaned_data["name"],
                        expires_at=form.cleaned_data["expires_at"],
                    )
                except TokenLimitReached:
                    # Another request took the last place since clean(): the stock
                    # page below validates again and shows the limit as a form error.
                    pass
                else:
                    # The stubs want a Form; Django passes its ModelForms here.
                    message = construct_change_message(form, [], add=True)  # type: ignore[arg-type]
                    self.log_addition(request, token, message)
                    return self._raw_token_response(request, token, raw, rotated=None)
        # GET, or a form with errors: the stock page renders it, with one button
        # (every save leads to the page that shows the raw token).
        extra = {
            **(extra_context or {}),
            "show_save_and_add_another": False,
            "show_save_and_continue": False,
        }
        return super().add_view(request, form_url, extra)

    def _raw_token_response(
        self,
        request: HttpRequest,
        token: ApiToken,
        raw: str,
        rotated: ApiToken | None,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token rotated" if rotated else "API token created",
            "token": token,
            "raw_token": raw,
            "rotated": rotated,
            "change_url": reverse("admin:accounts_apitoken_change", args=[token.pk]),
        }
        response = TemplateResponse(
            request, "admin/accounts/apitoken/token_created.html", context
        )
        add_never_cache_headers(response)
        patch_cache_control(response, no_store=True)
        return response

    # --- revoke and rotate -----------------------------------------------------

    @admin.action(description="Revoke selected API tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            api_token_revoke(token=token)
            self.log_change(request, token, "Revoked.")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<int:token_id>/revoke/",
                view(self.revoke_view),
                name="accounts_apitoken_revoke",
            ),
            path(
                "<int:token_id>/rotate/",
                view(self.rotate_view),
                name="accounts_apitoken_rotate",
            ),
            *super().get_urls(),
        ]

    def _token_for_action(self, request: HttpRequest, token_id: int) -> ApiToken:
        token = get_object_or_404(ApiToken.objects.select_related("user"), pk=token_id)
        if not self.has_change_permission(request, token):
            raise PermissionDenied
        return token

    def _confirm(self, request: HttpRequest, token: ApiToken, action: str):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.capitalize()} API token {token}?",
            "token": token,
            "action": action,
            "change_url": reverse("admin:accounts_apitoken_change", args=[token.pk]),
        }
        return TemplateResponse(
            request, "admin/accounts/apitoken/confirm_action.html", context
        )

    def revoke_view(self, request: HttpRequest, token_id: int):
        token = self._token_for_action(request, token_id)
        if request.method != "POST":
            return self._confirm(request, token, "revoke")
        if token.revoked_at is None:
            api_token_revoke(token=token)
            self.log_change(request, token, "Revoked.")
        self.message_user(request, f"Token {token} is revoked.", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:accounts_apitoken_change", args=[token.pk])
        )

    def rotate_view(self, request: HttpRequest, token_id: int):
        token = self._token_for_action(request, token_id)
        if not may_mint_tokens_for(request, token.user):
            raise PermissionDenied
        if token.revoked_at is not None:
            self.message_user(
                request,
                "A revoked token cannot be rotated; add a new one.",
                messages.ERROR,
            )
            return HttpResponseRedirect(
                reverse("admin:accounts_apitoken_change", args=[token.pk])
            )
        if request.method != "POST":
            return self._confirm(request, token, "rotate")
        try:
            new, raw = api_token_rotate(token=token)
        except TokenLimitReached as error:
            # An expired token frees no place when it is revoked.
            self.message_user(request, str(error), messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:accounts_apitoken_change", args=[token.pk])
            )
        self.log_change(request, token, f"Revoked: rotated to {new.prefix}.")
        self.log_addition(request, new, f"Rotated from {token.prefix}.")
        return self._raw_token_response(request, new, raw, rotated=token)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        token = self.get_object(request, object_id)
        may_rotate = token is not None and may_mint_tokens_for(request, token.user)
        extra = {
            **(extra_context or {}),
            "may_rotate": may_rotate,
            # Nothing on a token is editable: revoke and rotate are the actions.
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra)


class ApiTokenInline(admin.TabularInline):
    """A user's tokens on the user's page (read-only; links to each token)."""

    model = ApiToken
    readonly_fields = (
        "prefix",
        "name",
        "status",
        "created_at",
        "last_used_at",
        "expires_at",
    )
    fields = readonly_fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(SessionGrant)
class SessionGrantAdmin(admin.ModelAdmin):
    """Grants from POST /api/grants: read-only (their raw value is nowhere here);
    deleting one stops it opening sessions."""

    list_display = ["prefix", "user", "token", "created_at", "expires_at"]
    list_select_related = ["user", "token"]
    search_fields = ["prefix", "user__username"]
    readonly_fields = ["user", "token", "prefix", "created_at", "expires_at"]
    exclude = ["digest"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(User)
class UserWithTokensAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, ApiTokenInline]
