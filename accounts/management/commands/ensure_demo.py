"""Ready the demo account for `make run`: its login and API token, kept in .env."""

import os
import tempfile
from pathlib import Path

from django.conf import settings

from accounts.services import demo_account_ensure
from voiceproject.commands import OneLineErrorCommand

DEMO_TOKEN_NAME = "make run"  # noqa: S105 (a label)
# Names no setting reads (settings.py loads .env into the environment).
PASSWORD_KEY = "DEMO_PASSWORD"  # noqa: S105 (a name)
TOKEN_KEY = "DEMO_TOKEN"  # noqa: S105 (a name)
COMMENT = "# make run's demo login and API token (local use only; make demo-reset)"


class Command(OneLineErrorCommand):
    help = (
        "Ready the local demo account: a staff user and an API token, made once and "
        "kept in .env (mode 0600), printed on every run. --rotate makes new ones "
        "(earlier demo tokens are revoked). For local use only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--url", default="http://127.0.0.1:8765/")
        parser.add_argument(
            "--rotate", action="store_true", help="a new password and API token"
        )
        parser.add_argument(
            "--env-file",
            type=Path,
            default=Path(settings.BASE_DIR) / ".env",
            help="where they are kept (default: the project's .env)",
        )

    def handle(self, *args, **options):
        path: Path = options["env_file"]
        kept = {} if options["rotate"] else env_file_read(path)
        password, raw = demo_account_ensure(
            username=options["username"],
            password=kept.get(PASSWORD_KEY),
            raw_token=kept.get(TOKEN_KEY),
            token_name=DEMO_TOKEN_NAME,
        )
        env_file_update(path, {PASSWORD_KEY: password, TOKEN_KEY: raw})
        url = options["url"]
        ws_url = url.replace("http", "ws", 1)
        kept_how = (
            "new ones: browsers logged in as the demo user must log in again"
            if options["rotate"]
            else "the same on every run; make demo-reset makes new ones"
        )
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  open       {url}  (admin: {url}admin/)",
                    f"  log in     {options['username']} / {password}",
                    f"  API token  {raw}",
                    f"  kept in    {path.name} ({kept_how})",
                    "  try it     .venv/bin/python manage.py transcribe_file "
                    f"tests/fixtures/hello_world.wav --url {ws_url} --token {raw}",
                    "  stop       Ctrl-C",
                    "",
                ]
            )
        )


def env_file_read(path: Path) -> dict[str, str]:
    """The KEY=value lines of a .env file (no file: none)."""
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    return values


def env_file_update(path: Path, values: dict[str, str]) -> None:
    """Set `values` in a .env file, keeping its other lines; the file ends up 0600.

    Written to a new file (created 0600) that replaces the old one, so the secrets
    are never readable by others, not even for a moment.
    """
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [
        line
        for line in lines
        if line.partition("=")[0].strip() not in values and line != COMMENT
    ]
    kept += [COMMENT, *(f"{key}={value}" for key, value in values.items())]
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".env.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(kept) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
