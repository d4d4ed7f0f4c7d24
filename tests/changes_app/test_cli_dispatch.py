"""The command line as a thin dispatcher: every subcommand has one handler, the single-change actions
read the action table, the exit codes keep their numbers and the texts are unchanged (the JSON
shared with the API: tests/changes_app/api/test_cli_json.py)."""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

from changes_app.cli import actions, output
from changes_app.cli.dispatch import SUBCOMMANDS
from changes_app.engine.actions import ACTIONS
from changes_app.management.commands.flamingock import Command
from changes_app.models import ChangeRequest
from changes_app.services import ExitCode
from tests.support.trails import cli, run_pipeline, sql_change

Kind = ChangeRequest.Kind
REPO = Path(__file__).resolve().parents[2]


def subcommands() -> set[str]:
    parser = Command().create_parser("manage.py", "flamingock")
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(choices)


def test_every_subcommand_has_one_handler():
    assert subcommands() == set(SUBCOMMANDS) == {
        "plan", "run", "validate", "drift", "issues", "fix", "undo", "skip", "reapply", "accept-checksum",
        "requests", "cancel", "approve", "reject", "audit", "lock", "token", "workers", "adopt", "evidence", "fleet",
    }  # fmt: skip


def test_every_handler_path_names_a_function_that_takes_the_output_and_the_options():
    for subcommand, path in SUBCOMMANDS.items():
        handler = import_string(path)
        assert callable(handler), subcommand
        assert list(inspect.signature(handler).parameters)[:2] == ["out", "options"], subcommand


def test_plan_does_not_load_the_modules_of_other_subcommands(tmp_path):
    # A deploy gate's plan pays for its own module only (the audit export and signing stay unloaded).
    script = (
        "import os, sys, django\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'flamingock_site.settings')\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('flamingock', 'plan', '--json')\n"
        "print(sorted(m for m in ('changes_app.cli.audit', 'changes_app.cli.tokens', 'audit_app.export', 'cryptography') if m in sys.modules))\n"
    )
    env = {**os.environ, "FLAMINGOCK_VAR_DIR": str(tmp_path), "FLAMINGOCK_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**env, "FLAMINGOCK_CLI": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_single_change_actions_dispatch_through_the_action_table():
    assert actions.SUBCOMMAND_KINDS == {"undo": Kind.UNDO, "skip": Kind.SKIP, "reapply": Kind.REAPPLY, "accept-checksum": Kind.ACCEPT_CHECKSUM}
    assert actions.kind_of("fix", {"resolution": "applied"}) == Kind.MARK_APPLIED
    assert actions.kind_of("fix", {"resolution": "rolled-back"}) == Kind.MARK_ROLLED_BACK
    on_a_change = {kind for kind, action in ACTIONS.items() if action.subject == "change"}  # ADOPT's subject is a database
    assert set(actions.SUBCOMMAND_KINDS.values()) | {Kind.MARK_APPLIED, Kind.MARK_ROLLED_BACK} == on_a_change - {Kind.APPLY}


def test_the_exit_codes_keep_their_numbers():
    assert [(code.name, int(code)) for code in ExitCode] == [
        ("OK", 0), ("FAILED", 1), ("USAGE", 2), ("BLOCKED", 3), ("AWAITING_APPROVAL", 4), ("LOCKED", 5), ("INTEGRITY", 6), ("PENDING", 7),
    ]  # fmt: skip
    assert (output.EXIT_OK, output.EXIT_FAILED, output.EXIT_USAGE, output.EXIT_BLOCKED) == (0, 1, 2, 3)
    assert (output.EXIT_APPROVAL, output.EXIT_LOCKED, output.EXIT_INTEGRITY, output.EXIT_PENDING) == (4, 5, 6, 7)


def test_the_table_keeps_its_layout():
    assert output.table([["a", 1], ["bbb", 22]], ["X", "YY"]) == "X    YY\n---  --\na    1 \nbbb  22"


@pytest.mark.django_db(transaction=True)
def test_validate_and_plan_texts_are_unchanged(make_pipeline, unique):
    change = f"pending-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, f"CREATE TABLE t_{unique} (id integer)", f"DROP TABLE t_{unique}")}})

    pending = cli("validate")
    assert (pending.code, pending.out.strip()) == (7, f"pending: {change}")
    plan = cli("plan")
    assert plan.out.splitlines()[0].split() == ["STAGE", "ORDER", "CHANGE", "TARGET", "STATE", "NEXT", "ACTION", "REASON"]
    run_pipeline()
    valid = cli("validate")
    assert (valid.code, valid.out.strip()) == (0, "valid: everything is applied and nothing drifted")
    usage = cli("issues", "get", "--json")  # a usage error is text on standard error, with --json too
    assert (usage.code, usage.out, usage.err.strip()) == (2, "", "usage: flamingock issues get CHANGE_ID")
    refused = cli("undo", f"no-such-{unique}", "--reason", "x", "--json")  # a refusal is JSON with --json
    assert (refused.code, set(refused.json())) == (2, {"error", "exit_code"})
