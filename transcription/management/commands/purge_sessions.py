"""manage.py purge_sessions: retention, deleting old sessions in batches."""

import datetime as dt

from django.core.management.base import CommandError
from django.utils import timezone

from transcription.services import sessions_purge
from voiceproject.commands import OneLineErrorCommand


class Command(OneLineErrorCommand):
    help = (
        "Delete sessions started more than DAYS days ago, with their transcripts, "
        "errors and batches, in batches of --batch-size sessions, and print the "
        "counts. Sessions that may still be live are kept. Meant for a daily cron "
        "job, e.g. `manage.py purge_sessions --older-than 90`."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            required=True,
            metavar="DAYS",
            help="delete sessions started more than DAYS days ago (at least 1)",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="count what would be deleted, delete nothing",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            metavar="N",
            help="sessions deleted per transaction (default: 500)",
        )

    def handle(self, *args, **options):
        days, size = options["older_than"], options["batch_size"]
        if days < 1:
            raise CommandError("--older-than must be at least 1 day")
        if size < 1:
            raise CommandError("--batch-size must be at least 1")
        cutoff = timezone.now() - dt.timedelta(days=days)
        counts = sessions_purge(
            older_than=cutoff, batch_size=size, dry_run=options["dry_run"]
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        sessions = counts.pop("transcription.AudioSession", 0)
        self.stdout.write(
            f"{verb} {sessions} sessions started before {cutoff:%Y-%m-%d %H:%M %Z}."
        )
        for label, n in sorted(counts.items()):
            self.stdout.write(f"  {label}: {n}")
