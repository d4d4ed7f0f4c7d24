"""The mysql kind against the real MariaDB: DDL non-transactional by inference, data changes with the
marker in the target database, the DDL guard, compensation, kills on both strategies, reconciliation."""

import pytest

from changes_app.models import Run
from changes_app.pipeline.discovery import pipeline_load
from tests.changes_app.targets.conftest import mariadb_connect
from tests.changes_app.targets.support import crash_run, issue, last_entry, next_action, results, run_pipeline, states, undo, verify

pytestmark = pytest.mark.django_db(transaction=True)


def query(url: str, sql: str) -> list[tuple]:
    connection = mariadb_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())
    finally:
        connection.close()


def tables(url: str, unique: str) -> set[str]:
    return {
        row[0]
        for row in query(url, f"SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE '%{unique}%'")
    }


def markers(url: str, change_id: str) -> list[tuple]:
    return query(url, f"SELECT change_id, generation FROM flamingock_marker WHERE change_id = '{change_id}'")


def create_table(change_id: str, table: str, *, with_verify: bool = True) -> str:
    verify = f"""
        verify: >
          SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'
    """
    return f"""
        id: {change_id}
        author: tests
        target: billing
        template: sql
        apply: CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer NOT NULL)
        rollback: DROP TABLE {table}
    """ + (verify if with_verify else "")


def insert_rows(change_id: str, table: str) -> str:
    return f"""
        id: {change_id}
        author: tests
        target: billing
        template: sql
        apply: |
          INSERT INTO {table} (id, total_cents) VALUES (1, 4200);
          INSERT INTO {table} (id, total_cents) VALUES (2, 1999);
        rollback: DELETE FROM {table} WHERE id IN (1, 2);
    """


def test_mysql_ddl_is_non_transactional_by_inference_and_data_runs_with_the_marker_in_the_target(make_pipeline, unique, mariadb_url):
    table, create, insert = f"invoice_{unique}", f"create-{unique}", f"insert-{unique}"
    make_pipeline({"billing": {"0001_create.yaml": create_table(create, table), "0002_insert.yaml": insert_rows(insert, table)}})
    pipeline = pipeline_load()
    assert (pipeline.by_id[create].transactional, pipeline.by_id[insert].transactional) == (False, True)

    run = run_pipeline()

    assert results(run) == {create: "APPLIED", insert: "APPLIED"}
    assert (last_entry(create).transaction_strategy, last_entry(insert).transaction_strategy) == ("NON_TRANSACTIONAL", "MARKER")
    assert states(insert) == ["STARTED", "APPLIED"]
    assert query(mariadb_url, f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]
    assert markers(mariadb_url, insert) == [(insert, 0)], "the marker row committed with the rows, in the billing database"
    assert markers(mariadb_url, create) == []
    assert verify(create) is True

    undone = undo(create)

    assert undone.status == Run.Status.SUCCEEDED, undone.status_reason
    assert [r["change_id"] for r in undone.results] == [insert, create], "newest first"
    assert states(insert)[-3:] == states(create)[-3:] == ["ROLLBACK_STARTED", "ROLLED_BACK", "SKIPPED"]
    assert tables(mariadb_url, unique) == set()
    assert verify(create) is False


def test_mysql_data_change_that_raises_leaves_no_row_and_no_marker(make_pipeline, unique, mariadb_url):
    table, change = f"invoice_{unique}", f"insert-{unique}"
    query(mariadb_url, f"CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer NOT NULL)")
    make_pipeline(
        {
            "billing": {
                "0001_insert.yaml": f"""
                    id: {change}
                    author: tests
                    target: billing
                    template: sql
                    apply: |
                      INSERT INTO {table} (id, total_cents) VALUES (1, 4200);
                      INSERT INTO {table} (id, total_cents) VALUES (1, 1999);
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "FAILED"}
    assert states(change) == ["STARTED", "FAILED"]
    assert "Duplicate entry" in last_entry(change).error
    assert query(mariadb_url, f"SELECT id FROM {table}") == []
    assert markers(mariadb_url, change) == []
    assert next_action(change) == "APPLY", "nothing was committed: the next run applies it again"


def test_mysql_code_change_with_ddl_in_a_transaction_is_refused_before_the_statement_runs(make_pipeline, unique, mariadb_url):
    table, change = f"invoice_{unique}", f"ddl-{unique}"
    make_pipeline(
        {
            "billing": {
                "0001_ddl.py": f"""
                    from changes_app.definitions import Change

                    class CreateInTransaction(Change):
                        id = "{change}"
                        author = "tests"
                        target = "billing"

                        def apply(self, cursor):
                            cursor.execute("CREATE TABLE {table} (id integer)")
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "FAILED"}
    assert "MySQL and MariaDB commit implicitly" in last_entry(change).error
    assert "transactional = False" in last_entry(change).error
    assert tables(mariadb_url, unique) == set()
    assert markers(mariadb_url, change) == [], "no implicit commit took the marker row with it"


def test_mysql_ddl_failure_in_a_later_step_compensates_completed_steps_newest_first(make_pipeline, unique, mariadb_url):
    change = f"schema-{unique}"
    make_pipeline(
        {
            "billing": {
                "0001_schema.yaml": f"""
                    id: {change}
                    author: tests
                    target: billing
                    template: sql
                    steps:
                      - name: invoices
                        apply: CREATE TABLE inv_{unique} (id integer PRIMARY KEY)
                        rollback: DROP TABLE inv_{unique}
                      - name: lines
                        apply: CREATE TABLE line_{unique} (id integer PRIMARY KEY, invoice_id integer)
                        rollback: DROP TABLE line_{unique}
                      - name: index on a missing column
                        apply: CREATE INDEX idx_{unique} ON line_{unique} (no_such_column)
                        rollback: DROP INDEX idx_{unique} ON line_{unique}
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "ROLLED_BACK"}
    assert states(change) == ["STARTED", "FAILED", "ROLLBACK_STARTED", "ROLLED_BACK"]
    outcomes = last_entry(change).details["steps"]
    assert [(o["step"], "rollback" in o) for o in outcomes] == [
        ("invoices", False),
        ("lines", False),
        ("index on a missing column", False),
        ("lines", True),
        ("invoices", True),
    ]
    assert "no_such_column" in outcomes[2]["error"]
    assert tables(mariadb_url, unique) == set()


def test_mysql_data_change_killed_inside_its_transaction_is_settled_by_the_marker_and_applied_once(
    make_pipeline, unique, mariadb_url, subprocess_env
):
    table, change = f"invoice_{unique}", f"insert-{unique}"
    query(mariadb_url, f"CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer NOT NULL)")
    make_pipeline({"billing": {"0001_insert.yaml": insert_rows(change, table)}})

    crash_run(subprocess_env, "after_apply", change)

    assert states(change) == ["STARTED"]
    assert query(mariadb_url, f"SELECT id FROM {table}") == [], "the server rolled back the dead connection's transaction"
    assert next_action(change) == "RECONCILE"
    run = run_pipeline()
    assert results(run) == {change: "APPLIED"}
    assert states(change) == ["STARTED", "ROLLED_BACK", "STARTED", "APPLIED"]
    assert query(mariadb_url, f"SELECT count(*) FROM {table}") == [(2,)]


def test_mysql_data_change_killed_after_its_commit_is_reconciled_by_the_marker(make_pipeline, unique, mariadb_url, subprocess_env):
    table, change = f"invoice_{unique}", f"insert-{unique}"
    query(mariadb_url, f"CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer NOT NULL)")
    make_pipeline({"billing": {"0001_insert.yaml": insert_rows(change, table)}})

    crash_run(subprocess_env, "after_target_commit", change)

    assert states(change) == ["STARTED"]
    run = run_pipeline()
    assert results(run) == {change: "RECONCILED"}
    assert "marker row for generation 0 present in billing" in last_entry(change).details["evidence"]
    assert query(mariadb_url, f"SELECT count(*) FROM {table}") == [(2,)]


def test_mysql_ddl_change_killed_after_its_effect_is_an_issue_whose_guidance_names_the_statement(make_pipeline, unique, mariadb_url, subprocess_env):
    table, change = f"invoice_{unique}", f"create-{unique}"
    make_pipeline({"billing": {"0001_create.yaml": create_table(change, table, with_verify=False)}})

    crash_run(subprocess_env, "after_apply", change)

    assert states(change) == ["STARTED"]
    assert tables(mariadb_url, unique) == {table}
    details = issue(change)
    assert details["next_action"] == "MANUAL_INTERVENTION"
    assert (
        f"On 'billing' it does, in order: step 1: CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer NOT NULL)"
        in details["guidance"][1]
    )


def test_mysql_ddl_change_started_with_its_effect_present_is_reconciled_by_verify(make_pipeline, unique, mariadb_url, subprocess_env):
    table, change = f"invoice_{unique}", f"create-{unique}"
    make_pipeline({"billing": {"0001_create.yaml": create_table(change, table)}})
    crash_run(subprocess_env, "after_apply", change)
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert results(run) == {change: "RECONCILED"}
    assert states(change) == ["STARTED", "APPLIED"]
