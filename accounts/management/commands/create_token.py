"""manage.py create_token: a new API token, printed once, alone on the last line."""

import datetime as dt

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.utils import timezone

from accounts.services import (
    TokenLimitReached,
    api_token_create,
    user_get_or_create,
)
from voiceproject.commands import OneLineErrorCommand


class Command(OneLineErrorCommand):
    help = (
        "Create an API token for USERNAME. The raw token is printed alone on the "
        "last line of standard output and is never shown again (only its hash is "
        "stored)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", metavar="USERNAME")
        parser.add_argument(
            "--name", default="default", help="a label for the token (default: default)"
        )
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="create the user (without a password) if it does not exist",
        )
        parser.add_argument(
            "--expires-days",
            type=int,
            metavar="DAYS",
            help="the token stops working after DAYS days (default: never)",
        )

    def handle(self, *args, **options):
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters")
        days = options["expires_days"]
        if days is not None and days < 1:
            raise CommandError("--expires-days must be at least 1")
        try:
            user = user_get_or_create(
                username=options["username"], create=options["create_user"]
            )
        except get_user_model().DoesNotExist:
            raise CommandError(
                f"no user named {options['username']!r} (add --create-user)"
            ) from None
        expires_at = timezone.now() + dt.timedelta(days=days) if days else None
        try:
            token, raw = api_token_create(user=user, name=name, expires_at=expires_at)
        except TokenLimitReached as error:
            raise CommandError(str(error)) from None
        expiry = (
            f"expires {expires_at:%Y-%m-%d %H:%M %Z}" if expires_at else "never expires"
        )
        self.stdout.write(
            f"Created token {token.name!r} for {user.get_username()} "
            f"(prefix {token.prefix}, {expiry}). Store it now: it is not shown again."
        )
        self.stdout.write(raw)
