"""Every execution trail of docs/semantics.md §5, on the real audit database and a real external PostgreSQL:
the exact ledger sequence of each change and its effect on the target."""

import pytest
from django.db import connection

from audit_app.models import AuditEntry
from changes_app.models import Run
from changes_app.targets.base import target_systems_reset
from tests.support.trails import (
    crash_run,
    entries,
    external_table_exists,
    journal_change,
    ledger,
    markers,
    next_action,
    python_sql_change,
    results,
    rows,
    run_pipeline,
    sql_change,
    table_exists,
)

pytestmark = pytest.mark.django_db(transaction=True)


# -- shared transaction (the Django database that holds the audit trail) -----------------------------


def test_shared_change_commits_its_effect_with_its_applied_entry(make_pipeline, unique):
    change = f"shared-{unique}"
    make_pipeline({"main": {"0001_create.yaml": sql_change(change, f"CREATE TABLE s_{unique} (id integer PRIMARY KEY)")}})

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(change) == [(change, "APPLIED")]
    applied = entries(change)[0]
    assert (applied.transaction_strategy, applied.run_id, applied.fencing_token) == ("SHARED_TRANSACTION", run.id, run.fencing_token)
    assert table_exists(f"s_{unique}")
    assert run_pipeline().status == Run.Status.NO_CHANGES
    assert ledger(change) == [(change, "APPLIED")]


def test_shared_change_killed_before_commit_leaves_neither_effect_nor_entry(make_pipeline, unique, subprocess_env):
    change = f"shared-{unique}"
    make_pipeline({"main": {"0001_create.yaml": sql_change(change, f"CREATE TABLE s_{unique} (id integer PRIMARY KEY)")}})

    # Killed after apply, before the transaction holding the effect and APPLIED commits.
    crash_run(subprocess_env, "after_apply", change)

    assert ledger(change) == []
    assert not table_exists(f"s_{unique}")
    run = run_pipeline()
    assert results(run) == {change: "APPLIED"}
    assert ledger(change) == [(change, "APPLIED")]
    assert table_exists(f"s_{unique}")


def _shared_insert_then(make_pipeline, change: str, table: str, then: str) -> None:
    """A pipeline of one shared change that inserts a row into ``table`` (created here), then runs
    ``then`` (the lock taken over, the run cancelled...)."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY)")
    source = (
        "from audit_app.services import Actor\nfrom changes_app import services\nfrom changes_app.definitions import Change\n"
        "from changes_app.locks.backends import lock_backend\nfrom changes_app.locks.base import fence_advance\n\n\n"
        f"class Sql(Change):\n    id = {change!r}\n    author = 'tests'\n    target = 'app-db'\n\n"
        f"    def apply(self, cursor, context):\n        cursor.execute('INSERT INTO {table} (id) VALUES (1)')\n        {then}\n"
    )
    make_pipeline({"main": {"0001_insert.py": source}})


def test_shared_change_whose_lock_was_taken_over_is_rolled_back_with_its_refused_entry(make_pipeline, unique):
    """The fence refuses the APPLIED entry (on PostgreSQL the statement sent with the COMMIT raises,
    so the COMMIT is skipped): the change's row goes with it and the ledger does not move."""
    change, table = f"taken-{unique}", f"t_{unique}"
    _shared_insert_then(make_pipeline, change, table, "fence_advance(lock_backend().name)")

    run = run_pipeline()

    assert run.status == Run.Status.ABORTED
    assert "stale" in run.status_reason, run.status_reason
    assert results(run) == {change: "ABORTED"}
    assert ledger(change) == []
    assert rows(f"SELECT id FROM {table}") == []
    assert next_action(change) == "APPLY"


@pytest.mark.postgres  # on SQLite the cancel waits for the change's write lock: it cannot land meanwhile
def test_shared_change_of_a_run_cancelled_meanwhile_is_rolled_back_and_the_run_says_who_cancelled(make_pipeline, unique):
    change, table = f"cancelled-{unique}", f"c_{unique}"
    # An operator elsewhere (another connection, committed) cancels while the change is under way.
    cancel = (
        "import threading; from django.db import connection as c; "
        "t = threading.Thread(target=lambda: (services.run_cancel(run_id=context.run_id, actor=Actor(name='operator')), c.close())); "
        "t.start(); t.join()"
    )
    _shared_insert_then(make_pipeline, change, table, cancel)

    run = run_pipeline()

    assert run.status == Run.Status.ABORTED
    assert run.status_reason == "cancelled by operator"
    assert ledger(change) == []
    assert rows(f"SELECT id FROM {table}") == []
    assert next_action(change) == "APPLY"


@pytest.mark.postgres  # only PostgreSQL hashes in the database and re-checks in Python
def test_shared_change_whose_entry_the_database_hashed_otherwise_stops_the_run_and_says_why(make_pipeline, unique):
    """The hash re-check comes after the COMMIT the entry went with: the change and its entry are
    committed, so the run stops on the mismatch and names it (treated as a failed apply, the
    FAILED entry would be refused and the run would blame another holder)."""
    change, table = f"hashed-{unique}", f"h_{unique}"
    # For the APPLIED entry only: the writer's re-check formats the time as no server would.
    once = (
        "import audit_app.writer_postgresql as writer; original = writer.timestamp_text; "
        "writer.timestamp_text = lambda value: (setattr(writer, 'timestamp_text', original), 'not the server format')[1]"
    )
    _shared_insert_then(make_pipeline, change, table, once)

    run = run_pipeline()

    assert run.status == Run.Status.ABORTED
    assert "HashMismatch" in run.status_reason and "it was written and audit verify will report it" in run.status_reason, run.status_reason
    assert ledger(change) == [(change, "APPLIED")]
    assert rows(f"SELECT id FROM {table}") == [(1,)]


def test_shared_change_that_raises_leaves_no_row_and_a_failed_entry_with_the_error(make_pipeline, unique):
    change = f"insert-{unique}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE r_{unique} (id integer PRIMARY KEY)")
    make_pipeline(
        {"main": {"0001_insert.py": python_sql_change(change, f"INSERT INTO r_{unique} (id) VALUES (1)", raise_after=f"boom after insert {unique}")}}
    )

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert results(run) == {change: "FAILED"}
    assert ledger(change) == [(change, "FAILED")]
    failed = entries(change)[0]
    assert f"RuntimeError: boom after insert {unique}" in failed.error
    assert failed.details["rolled_back_natively"] is True
    assert rows(f"SELECT id FROM r_{unique}") == []
    assert next_action(change) == "APPLY"


def test_shared_change_that_failed_is_applied_by_the_next_run_once_fixed(make_pipeline, unique):
    change = f"fixme-{unique}"
    make_pipeline({"main": {"0001_t.py": python_sql_change(change, f"CREATE TABLE f_{unique} (id integer)", raise_after="not yet")}})
    assert run_pipeline().status == Run.Status.FAILED
    assert not table_exists(f"f_{unique}")

    make_pipeline({"main": {"0001_t.py": python_sql_change(change, f"CREATE TABLE f_{unique} (id integer)")}}, replace=True)
    run = run_pipeline()

    assert results(run) == {change: "APPLIED"}
    assert ledger(change) == [(change, "FAILED"), (change, "APPLIED")]
    assert table_exists(f"f_{unique}")


# -- marker (a transactional target in another database) ---------------------------------------------


def test_marker_change_records_started_then_applied_and_a_marker_row_with_the_run(make_pipeline, unique, external_pg):
    change = f"marker-{unique}"
    make_pipeline({"main": {"0001_m.py": python_sql_change(change, f"CREATE TABLE m_{unique} (id integer)", target="ext-pg")}})

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]
    assert all(entry.transaction_strategy == "MARKER" and entry.run_id == run.id for entry in entries(change))
    assert markers(external_pg, change) == [(0, str(run.id), run.fencing_token)]
    assert external_table_exists(external_pg, f"m_{unique}")


def test_marker_change_that_raises_commits_nothing_in_the_target_and_is_applied_next_run(make_pipeline, unique, external_pg):
    change = f"marker-{unique}"
    source = python_sql_change(change, f"CREATE TABLE m_{unique} (id integer)", target="ext-pg", raise_after=f"marker boom {unique}")
    make_pipeline({"main": {"0001_m.py": source}})

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED")]
    failed = entries(change, "FAILED")[0]
    assert f"RuntimeError: marker boom {unique}" in failed.error
    assert (failed.details["generation"], failed.details["rolled_back_natively"]) == (0, True)
    assert not external_table_exists(external_pg, f"m_{unique}")
    assert markers(external_pg, change) == []
    assert next_action(change) == "APPLY"

    make_pipeline({"main": {"0001_m.py": python_sql_change(change, f"CREATE TABLE m_{unique} (id integer)", target="ext-pg")}}, replace=True)
    again = run_pipeline()
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED"), (change, "STARTED"), (change, "APPLIED")]
    assert markers(external_pg, change) == [(0, str(again.id), again.fencing_token)]


def test_marker_change_killed_after_the_target_commit_is_reconciled_from_the_marker(make_pipeline, unique, external_pg, subprocess_env):
    change = f"marker-{unique}"
    make_pipeline({"main": {"0001_m.py": python_sql_change(change, f"CREATE TABLE m_{unique} (id integer)", target="ext-pg")}})
    crash_run(subprocess_env, "after_target_commit", change)
    assert ledger(change) == [(change, "STARTED")]
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert results(run) == {change: "RECONCILED"}
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]
    reconciled = entries(change, "APPLIED")[0]
    assert reconciled.details["reconciled"] is True
    assert "marker row for generation 0 present" in reconciled.details["evidence"]
    assert len(markers(external_pg, change)) == 1


# -- non-transactional (the journal) ------------------------------------------------------------------


def test_non_transactional_change_records_started_then_applied(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]
    assert {entry.transaction_strategy for entry in entries(change)} == {"NON_TRANSACTIONAL"}
    assert journal.entries() == [{"change": change, "op": "apply", "run": str(run.id)}]


def test_non_transactional_failure_is_compensated_by_its_rollback(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change, fail=f"journal boom {unique}", rollback="ok")}})

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert results(run) == {change: "ROLLED_BACK"}
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED"), (change, "ROLLBACK_STARTED"), (change, "ROLLED_BACK")]
    failed, rolled_back = entries(change, "FAILED")[0], entries(change, "ROLLED_BACK")[0]
    assert f"RuntimeError: journal boom {unique}" in failed.error
    assert f"RuntimeError: journal boom {unique}" in rolled_back.error
    assert rolled_back.details["compensation"] is True
    assert [entry["op"] for entry in journal.entries()] == ["apply", "rollback"]
    assert next_action(change) == "APPLY"


def test_non_transactional_failure_without_rollback_needs_manual_intervention(make_pipeline, unique, journal):
    change, later = f"note-{unique}", f"later-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change, fail="half done"), "0002_later.py": journal_change(later)}})

    run = run_pipeline()

    assert results(run) == {change: "FAILED", later: "NOT_REACHED"}
    assert ledger(change, later) == [(change, "STARTED"), (change, "FAILED")]
    assert "RuntimeError: half done" in entries(change, "FAILED")[0].error
    assert next_action(change) == "MANUAL_INTERVENTION"
    assert next_action(later) == "BLOCKED"
    blocked = run_pipeline()
    assert blocked.status == Run.Status.BLOCKED
    assert ledger(change, later) == [(change, "STARTED"), (change, "FAILED")]
    assert journal.count(change=later) == 0


def test_non_transactional_failing_rollback_keeps_both_errors(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change, fail=f"apply boom {unique}", rollback="fail")}})

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED"), (change, "ROLLBACK_STARTED"), (change, "ROLLBACK_FAILED")]
    rollback_failed = entries(change, "ROLLBACK_FAILED")[0]
    assert f"RuntimeError: apply boom {unique}" in rollback_failed.error
    assert "RuntimeError: rollback exploded" in rollback_failed.rollback_error
    assert next_action(change) == "MANUAL_INTERVENTION"


def test_multi_step_template_failing_at_step_three_compensates_steps_two_then_one(make_pipeline, unique):
    change = f"steps-{unique}"
    log = f"log_{unique}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {log} (seq integer PRIMARY KEY, what varchar(40))")

    def insert(what):
        return f"INSERT INTO {log} (seq, what) VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM {log}), '{what}')"

    document = f"""
        id: {change}
        author: tests
        target: app-db
        template: sql
        transactional: false
        steps:
          - name: one
            apply: "{insert("apply one")}"
            rollback: "{insert("undo one")}"
          - name: two
            apply: "{insert("apply two")}"
            rollback: "{insert("undo two")}"
          - name: three
            apply: INSERT INTO missing_{unique} (id) VALUES (1)
            rollback: "{insert("undo three")}"
    """
    make_pipeline({"main": {"0001_steps.yaml": document}})

    run = run_pipeline()

    assert results(run) == {change: "ROLLED_BACK"}
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED"), (change, "ROLLBACK_STARTED"), (change, "ROLLED_BACK")]
    assert [what for (what,) in rows(f"SELECT what FROM {log} ORDER BY seq")] == ["apply one", "apply two", "undo two", "undo one"]
    assert entries(change, "ROLLBACK_STARTED")[0].details["compensating"] == ["two", "one"]
    steps = entries(change, "ROLLED_BACK")[0].details["steps"]
    assert [{key: value for key, value in step.items() if key != "error"} for step in steps] == [
        {"step": "one", "apply": "done"},
        {"step": "two", "apply": "done"},
        {"step": "three", "apply": "failed"},
        {"step": "two", "rollback": "done"},
        {"step": "one", "rollback": "done"},
    ]
    assert f"missing_{unique}" in steps[2]["error"]
    failed_steps = entries(change, "FAILED")[0].details["steps"]
    assert [(step["step"], step["apply"]) for step in failed_steps] == [("one", "done"), ("two", "done"), ("three", "failed")]


# -- reconciliation of a STARTED non-transactional change ------------------------------------------------


def test_started_change_whose_verify_finds_the_effect_is_reconciled_to_applied(make_pipeline, unique, journal, subprocess_env):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change, verify=True)}})
    # Killed after the journal line, before APPLIED: the effect is there, the ledger says STARTED.
    crash_run(subprocess_env, "after_apply", change)
    assert ledger(change) == [(change, "STARTED")]
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert results(run) == {change: "RECONCILED"}
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]
    reconciled = entries(change, "APPLIED")[0].details
    assert (reconciled["reconciled"], reconciled["evidence"]) == (True, "verify probe found the effect present")
    assert journal.count(change=change, op="apply") == 1


def test_started_change_whose_verify_finds_no_effect_blocks_its_stage(make_pipeline, unique, journal, subprocess_env):
    change, later, other = f"note-{unique}", f"later-{unique}", f"other-{unique}"
    make_pipeline(
        {
            "main": {"0001_note.py": journal_change(change, verify=True), "0002_later.py": journal_change(later)},
            "side": {"0001_other.py": journal_change(other)},
        }
    )
    # Killed after STARTED, before the apply wrote anything.
    crash_run(subprocess_env, "after_started", change)
    assert ledger(change) == [(change, "STARTED")]

    run = run_pipeline()

    assert run.status == Run.Status.BLOCKED
    assert results(run) == {change: "BLOCKED", later: "BLOCKED", other: "APPLIED"}
    assert "verify probe found the effect absent" in next(r["reason"] for r in run.results if r["change_id"] == change)
    assert ledger(change, later) == [(change, "STARTED")]
    assert ledger(other) == [(other, "STARTED"), (other, "APPLIED")]
    assert journal.count(change=change) == 0
    assert journal.count(change=later) == 0


# -- stages ---------------------------------------------------------------------------------------------


def test_stage_stops_at_its_first_failed_change_while_another_stage_goes_on(make_pipeline, unique, journal):
    first, second, third, other = f"a1-{unique}", f"a2-{unique}", f"a3-{unique}", f"b1-{unique}"
    make_pipeline(
        {
            "alpha": {
                "0001_ok.py": journal_change(first),
                "0002_fails.py": python_sql_change(second, f"CREATE TABLE x_{unique} (id integer)", raise_after="stage alpha breaks"),
                "0003_after.py": journal_change(third),
            },
            "beta": {"0001_other.yaml": sql_change(other, f"CREATE TABLE b_{unique} (id integer)")},
        }
    )

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert results(run) == {first: "APPLIED", second: "FAILED", third: "NOT_REACHED", other: "APPLIED"}
    assert ledger(first, second, third, other) == [
        (first, "STARTED"),
        (first, "APPLIED"),
        (second, "FAILED"),
        (other, "APPLIED"),
    ]
    assert journal.count(change=third) == 0
    assert not table_exists(f"x_{unique}")
    assert table_exists(f"b_{unique}")


# -- secrets -----------------------------------------------------------------------------------------------


def test_error_with_a_dsn_password_is_stored_redacted(make_pipeline, unique, journal):
    change = f"leak-{unique}"
    password = f"pw{unique}Secret"
    source = journal_change(change, fail=f"cannot reach postgres://app:{password}@db.internal:5432/app (host=db password={password}x)")
    make_pipeline({"main": {"0001_leak.py": source}})

    run_pipeline()

    failed = entries(change, "FAILED")[0]
    assert "cannot reach postgres://app:********@db.internal:5432/app" in failed.error
    assert password not in failed.error
    assert not AuditEntry.objects.filter(error__contains=password).exists()


def test_error_with_a_configured_secret_value_is_stored_redacted(make_pipeline, unique, journal, settings, monkeypatch):
    change = f"leak-{unique}"
    secret = f"tok-{unique}-very-secret"
    monkeypatch.setenv("FLK_TEST_API_KEY", secret)
    settings.FLAMINGOCK_SECRET_ENV_VARS = ["FLK_TEST_API_KEY"]
    source = journal_change(
        change,
        imports="import os",
        apply_extra='raise RuntimeError("vendor refused key " + os.environ["FLK_TEST_API_KEY"] + " (expired)")',
    )
    make_pipeline({"main": {"0001_leak.py": source}})

    run_pipeline()

    assert ledger(change) == [(change, "STARTED"), (change, "FAILED")]
    failed = entries(change, "FAILED")[0]
    assert "vendor refused key ******** (expired)" in failed.error
    assert secret not in failed.error


def test_error_with_the_password_of_a_target_dsn_is_stored_redacted(make_pipeline, unique, external_pg, monkeypatch):
    change = f"leak-{unique}"
    password = f"Pw{unique}Target"
    # The local server trusts every login, so a DSN carrying a password still connects.
    monkeypatch.setenv("FLAMINGOCK_TEST_TARGET_DSN", external_pg.replace("postgres@", f"postgres:{password}@", 1))
    target_systems_reset()
    source = f"""
        import os

        from psycopg.conninfo import conninfo_to_dict

        from changes_app.definitions import Change


        class Leak(Change):
            id = "{change}"
            author = "tests"
            target = "ext-pg"

            def apply(self, cursor):
                password = conninfo_to_dict(os.environ["FLAMINGOCK_TEST_TARGET_DSN"])["password"]
                raise RuntimeError("login rejected for " + password + " on retry")
    """
    make_pipeline({"main": {"0001_leak.py": source}})

    run_pipeline()

    assert ledger(change) == [(change, "STARTED"), (change, "FAILED")]
    failed = entries(change, "FAILED")[0]
    assert "login rejected for ******** on retry" in failed.error
    assert password not in failed.error
