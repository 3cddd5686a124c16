"""Reads for accounts: API tokens with their usage."""

from collections import defaultdict
from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db.models import Count, FloatField, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from accounts.models import ApiToken, SessionGrant


def api_token_list(*, username: str | None = None) -> QuerySet[ApiToken]:
    """Tokens (newest first) with `session_count` and `audio_seconds_total`."""
    tokens = ApiToken.objects.select_related("user").annotate(
        session_count=Count("audio_sessions"),
        audio_seconds_total=Coalesce(
            Sum("audio_sessions__audio_seconds"), Value(0.0), output_field=FloatField()
        ),
    )
    if username:
        tokens = tokens.filter(user__username=username)
    return tokens.order_by("-created_at", "-pk")


def api_token_get_own(*, user: User, token_id: int) -> ApiToken | None:
    """The user's token with this id; None when it does not exist or is not theirs."""
    return ApiToken.objects.filter(user=user, pk=token_id).first()


def api_token_digests(*, prefixes: Iterable[str]) -> dict[str, list[str]]:
    """prefix → the digests of the usable tokens with that prefix, for `prefixes`
    (one query on the prefix index; nothing is written)."""
    found: dict[str, list[str]] = defaultdict(list)
    rows = ApiToken.objects.usable().filter(prefix__in=list(prefixes))
    for prefix, digest in rows.values_list("prefix", "digest"):
        found[prefix].append(digest)
    return dict(found)


def grant_digests(*, prefixes: Iterable[str]) -> dict[str, list[str]]:
    """The same for usable grants (SessionGrant)."""
    found: dict[str, list[str]] = defaultdict(list)
    rows = SessionGrant.objects.usable().filter(prefix__in=list(prefixes))
    for prefix, digest in rows.values_list("prefix", "digest"):
        found[prefix].append(digest)
    return dict(found)
