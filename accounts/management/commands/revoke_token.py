"""manage.py revoke_token: stop a token working, found by prefix or raw value."""

from django.core.management.base import CommandError

from accounts.services import TokenNotFound, api_token_find, api_token_revoke
from voiceproject.commands import OneLineErrorCommand


class Command(OneLineErrorCommand):
    help = (
        "Revoke an API token, given its prefix (as list_tokens shows it) or the raw "
        "token. It stops working at once; revoking twice is harmless."
    )

    def add_arguments(self, parser):
        parser.add_argument("token", metavar="PREFIX_OR_RAW_TOKEN")

    def handle(self, *args, **options):
        try:
            token = api_token_find(prefix_or_raw=options["token"])
        except TokenNotFound as exc:
            # The message names neither what was typed nor any token: it may be raw.
            raise CommandError(str(exc)) from None
        already = token.revoked_at is not None
        api_token_revoke(token=token)
        state = "was already revoked" if already else "revoked"
        owner = token.user.get_username()
        self.stdout.write(f"Token {token.prefix} ({token.name!r}, {owner}) {state}.")
