"""The API token model: only a hash and a short prefix are ever stored."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ApiTokenQuerySet(models.QuerySet):
    """A token's status (`ApiToken.status`) as filters: the one rule for both."""

    def active(self) -> "ApiTokenQuerySet":
        """Neither revoked nor expired (whatever its user's state)."""
        not_expired = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        return self.filter(not_expired, revoked_at__isnull=True)

    def expired(self) -> "ApiTokenQuerySet":
        return self.filter(revoked_at__isnull=True, expires_at__lte=timezone.now())

    def revoked(self) -> "ApiTokenQuerySet":
        return self.filter(revoked_at__isnull=False)

    def with_status(self, status: str) -> "ApiTokenQuerySet":
        """The tokens whose `status` is `status` (one of ApiToken.STATUSES)."""
        if status not in ApiToken.STATUSES:
            raise ValueError(f"unknown token status {status!r}")
        return getattr(self, status)()

    def usable(self) -> "ApiTokenQuerySet":
        """Active tokens of active users: those that authenticate."""
        return self.active().filter(user__is_active=True)


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    STATUSES = ("active", "expired", "revoked")

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "active"


class SessionGrantQuerySet(models.QuerySet):
    def usable(self) -> "SessionGrantQuerySet":
        """Grants that still open sessions: unexpired, of an active user, and (when
        a token asked for them) while that token is usable."""
        now = timezone.now()
        parent_usable = Q(token__isnull=True) | (
            Q(token__revoked_at__isnull=True)
            & (Q(token__expires_at__isnull=True) | Q(token__expires_at__gt=now))
        )
        return self.filter(parent_usable, expires_at__gt=now, user__is_active=True)


class SessionGrant(models.Model):
    """A short-lived credential that only opens WebSocket sessions (POST /api/grants).

    Made for a web page that must not hold the long-lived token: stored like a token
    (a hash and a prefix), valid for GRANT_SECONDS. A session opened with it runs on
    as its user's (and its token's, when a token asked for it).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="grants"
    )
    # The token that asked for it (None: a logged-in browser session did).
    token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(db_index=True)

    objects = SessionGrantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"grant {self.prefix}… of {self.user_id}"
