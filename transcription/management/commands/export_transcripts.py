"""manage.py export_transcripts: stored transcripts as txt, json, srt or csv."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from transcription import selectors
from transcription.web import exports
from voiceproject.commands import OneLineErrorCommand


class Command(OneLineErrorCommand):
    help = (
        "Print stored transcripts: every session, a user's (--user), one (--session) "
        "or the latest (--last). Formats: txt (a header per session, one final per "
        "line), json, srt (cues from the stored start/end times) and csv (one row "
        "per session, no transcript text)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--user", metavar="USERNAME", help="only USERNAME's sessions"
        )
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--session",
            metavar="ID",
            help="one session: its id or a unique start of it",
        )
        which.add_argument(
            "--last", action="store_true", help="only the most recent session"
        )
        parser.add_argument(
            "--format", choices=exports.FORMATS, default="txt", help="default: txt"
        )

    def handle(self, *args, **options):
        username = options["user"]
        if username and not get_user_model().objects.filter(username=username).exists():
            raise CommandError(f"no user named {username!r}")
        ids = None
        if options["session"]:
            session = selectors.session_find(id_or_prefix=options["session"])
            if session is None:
                raise CommandError(f"no single session matches {options['session']!r}")
            ids = [session.pk]
        sessions = exports.sessions_for_export(
            username=username, session_ids=ids, last=options["last"]
        )
        if not sessions:
            raise CommandError("no sessions match")
        self.stdout.write(exports.export(sessions, options["format"]), ending="")
