"""Helpers for the trail tests of docs/semantics.md §5: the ledger as a sequence, change sources, the CLI run
in-process, and child processes killed at a boundary to leave a change STARTED for real."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from io import StringIO

import psycopg
from django.core.management import call_command
from django.db import connection

from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.locks.backends import lock_backend
from changes_app.models import Run
from tests.conftest import manage


def ledger(*change_ids: str) -> list[tuple[str, str]]:
    """(change id, state) of every entry of these changes, in the order written; an entry with no
    state (a checksum re-baseline) shows its event instead."""
    rows = AuditEntry.objects.filter(change_id__in=change_ids).order_by("id").values_list("change_id", "state", "event")
    return [(change_id, state or event) for change_id, state, event in rows]


def entries(change_id: str, state: str | None = None) -> list[AuditEntry]:
    found = AuditEntry.objects.filter(change_id=change_id).order_by("id")
    return list(found.filter(state=state) if state is not None else found)


def run_events(run: Run) -> list[str]:
    return list(AuditEntry.objects.filter(run_id=run.id).order_by("id").values_list("event", flat=True))


def results(run: Run) -> dict[str, str]:
    """change id -> per-change result of a finished run."""
    return {row["change_id"]: row["result"] for row in run.results}


def run_pipeline(actor: Actor | None = None) -> Run:
    return services.run_start(actor=actor or cli_actor(), source=Run.Source.CLI)


def next_action(change_id: str) -> str:
    item = services.pipeline_plan().item(change_id)
    assert item is not None, f"{change_id} is not in the pipeline"
    return item.action.value


def written() -> tuple[int, int]:
    """(audit entries, runs): compared before and after a refused action to prove nothing was written
    but the refusal's own evidence (``access.refused``, tests/changes_app/test_refusals.py)."""
    return AuditEntry.objects.exclude(event__in=("access.refused", "auth.login_failed")).count(), Run.objects.count()


def local_operator() -> Actor:
    return cli_actor(token="")


# -- the audit database and the external target ---------------------------------------------------


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        return name in connection.introspection.table_names(cursor)


def rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


def external(dsn: str, sql: str, params: list | None = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def external_table_exists(dsn: str, name: str) -> bool:
    return external(dsn, "SELECT to_regclass(%s) IS NOT NULL", [name])[0][0]


def markers(dsn: str, change_id: str) -> list[tuple]:
    """(generation, run id, fencing token) of the marker rows of a change in the external target."""
    if not external_table_exists(dsn, "flamingock_marker"):
        return []
    return external(dsn, "SELECT generation, run_id, fencing_token FROM flamingock_marker WHERE change_id = %s ORDER BY generation", [change_id])


# -- change sources -------------------------------------------------------------------------------


def journal_change(
    change_id: str,
    *,
    fail: str = "",
    rollback: str | None = None,
    verify: bool = False,
    recovery: str = "",
    apply_extra: str = "",
    imports: str = "",
) -> str:
    """A Python change on the journal target. ``fail`` makes apply raise after writing its line;
    ``rollback`` is ``"ok"``, ``"fail"`` or ``None`` (no rollback method); ``verify`` adds a probe that
    looks for the change's apply line in the journal; ``apply_extra`` runs at the end of apply."""
    lines = ["from changes_app.definitions import Change", *([imports] if imports else []), "", "", "class Note(Change):"]
    lines += [f"    id = {change_id!r}", '    author = "tests"', '    target = "journal"']
    if recovery:
        lines.append(f"    recovery = {recovery!r}")
    lines += ["", "    def apply(self, journal, context):", '        journal.write(change=context.change_id, op="apply", run=str(context.run_id))']
    if fail:
        lines.append(f"        raise RuntimeError({fail!r})")
    if apply_extra:
        lines += [f"        {line}" for line in apply_extra.splitlines()]
    if rollback is not None:
        lines += ["", "    def rollback(self, journal, context):", '        journal.write(change=context.change_id, op="rollback")']
        if rollback == "fail":
            lines.append('        raise RuntimeError("rollback exploded")')
    if verify:
        lines += ["", "    def verify(self, journal, context):", '        return journal.count(change=context.change_id, op="apply") > 0']
    return "\n".join(lines) + "\n"


def sql_change(change_id: str, apply: str, rollback: str | None = None, *, target: str = "app-db", extra: str = "") -> str:
    """A YAML change of the ``sql`` template."""
    text = f"id: {change_id}\nauthor: tests\ntarget: {target}\ntemplate: sql\napply: {json.dumps(apply)}\n"
    if rollback is not None:
        text += f"rollback: {json.dumps(rollback)}\n"
    return text + extra


def python_sql_change(change_id: str, apply_sql: str, rollback_sql: str | None = None, *, target: str = "app-db", raise_after: str = "") -> str:
    """A Python change executing SQL through the ``cursor`` dependency, optionally raising afterwards."""
    lines = ["from changes_app.definitions import Change", "", "", "class Sql(Change):"]
    lines += [f"    id = {change_id!r}", '    author = "tests"', f"    target = {target!r}", "", "    def apply(self, cursor):"]
    lines.append(f"        cursor.execute({apply_sql!r})")
    if raise_after:
        lines.append(f"        raise RuntimeError({raise_after!r})")
    if rollback_sql is not None:
        lines += ["", "    def rollback(self, cursor):", f"        cursor.execute({rollback_sql!r})"]
    return "\n".join(lines) + "\n"


# -- processes ---------------------------------------------------------------------------------------


def crash_run(subprocess_env, boundary: str, change_id: str) -> None:
    """Run the pipeline in a child process that SIGKILLs itself at ``boundary`` of ``change_id``, then
    free the dead holder's lock so that the test can go on at once."""
    result = manage("flamingock", "run", env=subprocess_env(FLAMINGOCK_CRASH_AT=f"{boundary}:{change_id}"))
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout, result.stderr)
    assert lock_backend().force_release() is not None


# -- the command line in this process ----------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def cli(*args: str) -> CliResult:
    """``manage.py flamingock ARGS`` through call_command; the exit code comes from SystemExit."""
    out, err = StringIO(), StringIO()
    try:
        call_command("flamingock", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return CliResult(code, out.getvalue(), err.getvalue())
