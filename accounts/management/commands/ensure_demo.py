"""Ready the demo account for `make run`: a fresh password and API token, printed."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke

DEMO_TOKEN_NAME = "make run"  # noqa: S105 (a label)


class Command(BaseCommand):
    help = (
        "Create or refresh the local demo account: a new password and a new API "
        "token (earlier demo tokens are revoked), printed. For local use only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--url", default="http://127.0.0.1:8765/")

    @transaction.atomic
    def handle(self, *args, **options):
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        user.is_staff = user.is_superuser = True
        user.save()
        for old in ApiToken.objects.filter(user=user, name=DEMO_TOKEN_NAME):
            api_token_revoke(token=old)
        _, raw = api_token_create(user=user, name=DEMO_TOKEN_NAME)
        url = options["url"]
        ws_url = url.replace("http", "ws", 1)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  open       {url}  (admin: {url}admin/)",
                    f"  log in     {user.get_username()} / {password}",
                    f"  API token  {raw}",
                    "  try it     .venv/bin/python manage.py transcribe_file "
                    f"tests/fixtures/hello_world.wav --url {ws_url} --token {raw}",
                    "",
                ]
            )
        )
