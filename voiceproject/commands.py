"""A base for manage.py commands: bad input ends in one line, never a usage dump."""

from django.core.management.base import BaseCommand


class OneLineErrorCommand(BaseCommand):
    """argparse errors print `manage.py NAME: error: …` alone (usage is in --help).

    CommandError already prints one `CommandError: …` line and exits 1; argparse
    errors exit 2.
    """

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # argparse prints the usage before the error; the usage lives in --help.
        # An override on this one instance: Django builds the parser itself.
        parser.print_usage = lambda file=None: None  # type: ignore[method-assign]
        return parser
