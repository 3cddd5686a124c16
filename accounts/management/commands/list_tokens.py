"""manage.py list_tokens: API tokens by prefix (never the raw token)."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from accounts.selectors import api_token_list
from voiceproject.commands import OneLineErrorCommand

COLUMNS = ("prefix", "name", "user", "status", "created", "last used", "expires")


def _when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "-"


class Command(OneLineErrorCommand):
    help = (
        "List API tokens (all, or USERNAME's): prefix, name, user, status, created, "
        "last used, expires. Raw tokens are never stored, so never shown."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", metavar="USERNAME")

    def handle(self, *args, **options):
        username = options["username"]
        if username and not get_user_model().objects.filter(username=username).exists():
            raise CommandError(f"no user named {username!r}")
        rows = [
            (
                t.prefix,
                t.name,
                t.user.get_username(),
                t.status,
                _when(t.created_at),
                _when(t.last_used_at),
                _when(t.expires_at) if t.expires_at else "never",
            )
            for t in api_token_list(username=username)
        ]
        if not rows:
            self.stdout.write("No tokens.")
            return
        widths = [max(len(str(r[i])) for r in (COLUMNS, *rows)) for i in range(7)]
        for row in (COLUMNS, *rows):
            line = "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
            self.stdout.write(line.rstrip())
