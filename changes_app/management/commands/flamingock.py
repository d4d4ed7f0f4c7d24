"""``python manage.py flamingock SUBCOMMAND``: the command line.

Every subcommand parses its arguments, calls one service and prints the outcome, as a table or,
with ``--json``, as JSON (``changes_app.cli``). Exit codes: 0 success or nothing to do; 1 a change
failed; 2 usage or configuration error; 3 blocked; 4 awaiting approval; 5 lock not acquired;
6 integrity failure; 7 pending changes.
"""

from __future__ import annotations

import sys

from django.core.checks import run_checks
from django.core.management.base import BaseCommand, CommandParser

from changes_app.cli import parser
from changes_app.cli.dispatch import dispatch
from changes_app.cli.output import EXIT_USAGE, Output
from changes_app.pipeline import collector

#: The tag of the production-mode refusals (``changes_app.checks.PRODUCTION_TAG``; a sibling layer,
#: so it is named here rather than imported).
PRODUCTION_CHECKS_TAG = "flamingock_production"


class Command(BaseCommand):
    help = "Plan, run, validate and govern change-as-code (see README)."

    # The command validates the pipeline itself and reports problems in its own format (with
    # --json too) and exit code 2; ``manage.py check`` still runs the system checks. Of those it runs
    # the production-mode refusals only (an unsafe setting in production mode: exit 2).
    requires_system_checks = []

    def add_arguments(self, parser_: CommandParser) -> None:
        parser.add_arguments(parser_)

    def handle(self, *args, **options):
        collector.keep_loaded()  # manage.py started the command line with the collector off
        out = Output(self.stdout, self.stderr, as_json=options.get("json", False))
        refusals = [message for message in run_checks(tags=[PRODUCTION_CHECKS_TAG]) if message.is_serious()]
        if refusals:
            out.fail(
                EXIT_USAGE,
                "refused: unsafe settings in production mode\n"
                + "\n".join(f"{message.id}: {message.msg}\n  HINT: {message.hint}" for message in refusals),
                problems=[{"id": message.id, "message": message.msg, "hint": message.hint} for message in refusals],
            )
            sys.exit(EXIT_USAGE)
        code = dispatch(out, options)
        sys.stdout.flush()
        if code:
            sys.exit(code)
