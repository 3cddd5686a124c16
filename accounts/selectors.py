"""Reads for accounts: a user's own API tokens."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from accounts.models import ApiToken


def api_token_list(*, user: AbstractBaseUser) -> QuerySet[ApiToken]:
    """The user's tokens, newest first, revoked and expired ones included."""
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def api_token_get_own(*, user: AbstractBaseUser, token_id: int) -> ApiToken | None:
    """The user's token with this id; None when it does not exist or is not theirs."""
    return ApiToken.objects.filter(user=user, pk=token_id).first()
