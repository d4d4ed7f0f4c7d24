"""``python manage.py flamingock SUBCOMMAND``: the command line.

Every subcommand parses its arguments, calls one service and prints the outcome, as a table or,
with ``--json``, as JSON (``changes_app.cli``). Exit codes: 0 success or nothing to do; 1 a change
failed; 2 usage or configuration error; 3 blocked; 4 awaiting approval; 5 lock not acquired;
6 integrity failure; 7 pending changes.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandParser

from changes_app.cli import parser
from changes_app.cli.dispatch import dispatch
from changes_app.cli.output import Output
from changes_app.pipeline import collector


class Command(BaseCommand):
    help = "Plan, run, validate and govern change-as-code (see README)."

    # The command validates the pipeline itself and reports problems in its own format (with
    # --json too) and exit code 2; ``manage.py check`` still runs the system checks.
    requires_system_checks = []

    def add_arguments(self, parser_: CommandParser) -> None:
        parser.add_arguments(parser_)

    def handle(self, *args, **options):
        collector.keep_loaded()  # manage.py started the command line with the collector off
        code = dispatch(Output(self.stdout, self.stderr, as_json=options.get("json", False)), options)
        sys.stdout.flush()
        if code:
            sys.exit(code)
