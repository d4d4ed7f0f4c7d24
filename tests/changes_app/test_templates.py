"""The ``sql`` template: statement splitting per dialect, steps run in order, and verify queries.

Split scripts are executed on the real servers (PostgreSQL, SQLite) to prove that each piece is a
statement the server accepts on its own.
"""

import sqlite3
import textwrap

import psycopg
import pytest

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.pipeline.plan import Action
from changes_app.targets.base import TargetSystem, target_systems
from changes_app.targets.templates import SqlTemplate, split_statements
from tests.support.ledger import state_record

pytestmark = pytest.mark.django_db


def script(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_SCRIPT = script(
    """
    CREATE TABLE notes_{u} (id serial PRIMARY KEY, body text);  -- a comment; with a semicolon
    /* a block comment; also with one */
    INSERT INTO notes_{u} (body) VALUES ('a;b'), ('it''s; fine'), (E'escaped\\'; quote');
    CREATE FUNCTION stamp_{u}() RETURNS trigger AS $$
    BEGIN
      NEW.body := NEW.body || ';stamped';
      RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER stamp_{u} BEFORE INSERT ON notes_{u} FOR EACH ROW EXECUTE FUNCTION stamp_{u}();
    CREATE FUNCTION one_{u}() RETURNS integer AS $body$ SELECT 1; $body$ LANGUAGE sql;
    INSERT INTO notes_{u} (body) VALUES ($q$dollar; quoted$q$);
    -- a trailing comment; not a statement
    """
)


def test_postgresql_split_honours_dollar_quotes_strings_and_comments():
    statements = split_statements(PG_SCRIPT.format(u="x"), "postgresql")
    assert len(statements) == 6
    assert statements[0].startswith("CREATE TABLE notes_x")
    assert statements[1].endswith("(E'escaped\\'; quote');")
    assert statements[2].startswith("CREATE FUNCTION stamp_x()") and statements[2].endswith("$$ LANGUAGE plpgsql;")
    assert "RETURN NEW;" in statements[2]
    assert statements[3].startswith("CREATE TRIGGER stamp_x")
    assert statements[4] == "CREATE FUNCTION one_x() RETURNS integer AS $body$ SELECT 1; $body$ LANGUAGE sql;"
    assert statements[5] == "INSERT INTO notes_x (body) VALUES ($q$dollar; quoted$q$);"


def test_postgresql_split_statements_run_one_by_one_on_postgresql(external_pg, unique):
    with psycopg.connect(external_pg, autocommit=True) as connection:
        for statement in split_statements(PG_SCRIPT.format(u=unique), "postgresql"):
            connection.execute(statement)
        bodies = [row[0] for row in connection.execute(f"SELECT body FROM notes_{unique} ORDER BY id")]
        assert bodies == ["a;b", "it's; fine", "escaped'; quote", "dollar; quoted;stamped"]
        assert connection.execute(f"SELECT one_{unique}()").fetchone() == (1,)


@pytest.mark.parametrize("text", ["", "  \n ", "-- only a comment;", "/* ; */", ";;", "-- one\n;\n/* two */;"])
def test_scripts_without_statements_split_to_nothing(text):
    for dialect in ("postgresql", "sqlite", "mysql"):
        assert split_statements(text, dialect) == []


# -- SQLite ------------------------------------------------------------------------------------------

SQLITE_SCRIPT = script(
    """
    CREATE TABLE counts (id integer PRIMARY KEY, n integer, note text);
    CREATE TRIGGER bump AFTER INSERT ON counts
    BEGIN
      UPDATE counts SET n = n + 1 WHERE id = NEW.id;
      INSERT INTO counts (id, n, note) SELECT NEW.id + 100, 0, 'copy; of ' || NEW.id WHERE NEW.id < 100;
    END;
    INSERT INTO counts (id, n, note) VALUES (1, 0, 'first; row');
    """
)


def test_sqlite_split_keeps_a_trigger_body_whole():
    statements = split_statements(SQLITE_SCRIPT, "sqlite")
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER bump") and statements[1].endswith("END;")
    assert "UPDATE counts SET n = n + 1" in statements[1]


def test_sqlite_split_statements_run_one_by_one_on_sqlite():
    connection = sqlite3.connect(":memory:")
    for statement in split_statements(SQLITE_SCRIPT, "sqlite"):
        assert sqlite3.complete_statement(statement), statement
        connection.execute(statement)
    assert connection.execute("SELECT id, n, note FROM counts ORDER BY id").fetchall() == [(1, 1, "first; row"), (101, 0, "copy; of 1")]


# -- MySQL / MariaDB --------------------------------------------------------------------------------


def test_mysql_delimiter_blocks_are_split_at_the_custom_delimiter():
    statements = split_statements(
        script(
            """
            CREATE TABLE log (id int);
            DELIMITER $$
            CREATE PROCEDURE fill()
            BEGIN
              INSERT INTO log VALUES (1);
              INSERT INTO log VALUES (2);
            END$$
            CREATE FUNCTION two() RETURNS int DETERMINISTIC
            BEGIN
              RETURN 2;
            END $$
            DELIMITER ;
            CALL fill();
            """
        ),
        "mysql",
    )
    assert [" ".join(statement.split()).rstrip(";") for statement in statements] == [
        "CREATE TABLE log (id int)",
        "CREATE PROCEDURE fill() BEGIN INSERT INTO log VALUES (1); INSERT INTO log VALUES (2); END",
        "CREATE FUNCTION two() RETURNS int DETERMINISTIC BEGIN RETURN 2; END",
        "CALL fill()",
    ]


def test_mysql_delimiter_lines_never_reach_the_server():
    statements = split_statements("DELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; END //\ndelimiter ;\nSELECT 2;\n", "mysql")
    assert not any("delimiter" in statement.lower() for statement in statements)
    assert [statement.rstrip(";") for statement in statements] == ["CREATE PROCEDURE p() BEGIN SELECT 1; END", "SELECT 2"]


def test_mysql_statements_after_delimiter_reset_split_like_any_script():
    statements = split_statements(
        script(
            """
            DELIMITER $$
            CREATE PROCEDURE p() BEGIN SELECT 1; END$$
            DELIMITER ;
            INSERT INTO log VALUES (1); INSERT INTO log VALUES (2);
            INSERT INTO notes VALUES ('ends a line;
            inside a string');
            """
        ),
        "mysql",
    )
    assert [statement.rstrip(";") for statement in statements] == [
        "CREATE PROCEDURE p() BEGIN SELECT 1; END",
        "INSERT INTO log VALUES (1)",
        "INSERT INTO log VALUES (2)",
        "INSERT INTO notes VALUES ('ends a line;\ninside a string')",
    ]


def test_mysql_script_without_delimiter_splits_on_semicolons_outside_strings():
    assert split_statements("SELECT ';'; SELECT 2", "mysql") == ["SELECT ';';", "SELECT 2"]


# -- statements that cannot run in a transaction, per dialect --------------------------------------


class DialectTarget(TargetSystem):
    """A SQL target descriptor of a given dialect: the template only reads its dialect."""

    kind = "dialect-only"

    def __init__(self, dialect: str):
        super().__init__(f"{dialect}-target", {})
        self._dialect = dialect

    @property
    def dialect(self) -> str:
        return self._dialect


@pytest.mark.parametrize(
    ("dialect", "statement"),
    [
        ("postgresql", "CREATE INDEX CONCURRENTLY i ON t (c)"),
        ("postgresql", "create unique index concurrently i on t (c)"),
        ("postgresql", "DROP INDEX CONCURRENTLY i"),
        ("postgresql", "VACUUM t"),
        ("postgresql", "CREATE DATABASE d"),
        ("postgresql", "ALTER SYSTEM SET work_mem = '8MB'"),
        ("sqlite", "VACUUM"),
        ("mysql", "ALTER TABLE t ADD COLUMN c int"),
    ],
)
def test_statement_that_cannot_run_in_a_transaction_is_refused_in_a_transactional_change(dialect, statement):
    document = {"apply": f"SELECT 1;\n{statement};"}
    [(key, message)] = SqlTemplate().problems(document, DialectTarget(dialect), transactional=True)
    assert key == "apply"
    assert message.endswith(f"cannot run inside a transaction on {dialect}: declare 'transactional: false'")
    assert SqlTemplate().problems(document, DialectTarget(dialect), transactional=False) == []


@pytest.mark.parametrize(
    ("dialect", "statement"),
    [
        ("postgresql", "CREATE INDEX i ON t (c)"),
        ("postgresql", "INSERT INTO t VALUES ('CREATE INDEX CONCURRENTLY')"),
        ("sqlite", "CREATE TABLE vacuum_log (id integer)"),
        ("mysql", "INSERT INTO t VALUES (1)"),
    ],
)
def test_ordinary_statement_is_accepted_in_a_transactional_change(dialect, statement):
    assert SqlTemplate().problems({"apply": statement}, DialectTarget(dialect), transactional=True) == []


def test_sql_template_needs_a_sql_target(targets):
    [(_, message)] = SqlTemplate().problems({"apply": "SELECT 1"}, target_systems()["journal"], transactional=False)
    assert message == "the sql template needs a SQL target; 'journal' is a generic target"


def test_apply_made_only_of_comments_is_refused():
    assert SqlTemplate().problems({"apply": "-- TODO;"}, DialectTarget("postgresql"), transactional=True) == [("apply", "missing 'apply' SQL")]


# -- steps, in order -------------------------------------------------------------------------------


def steps_change(change_id: str, table: str, *, target: str, transactional: bool | None = None) -> str:
    """Three steps; each appends its name at position count(*) + 1, so any reordering shows."""
    header = f"id: {change_id}\nauthor: tests\ntarget: {target}\ntemplate: sql\n"
    if transactional is not None:
        header += f"transactional: {str(transactional).lower()}\n"
    return header + textwrap.dedent(
        f"""\
        steps:
          - name: create
            apply: |
              CREATE TABLE {table} (position integer, step varchar(10));
              INSERT INTO {table} VALUES (1, 'create');
            rollback: DROP TABLE {table}
          - name: second
            apply: INSERT INTO {table} SELECT count(*) + 1, 'second' FROM {table}
            rollback: DELETE FROM {table} WHERE step = 'second'
          - name: third
            apply: |
              INSERT INTO {table} SELECT count(*) + 1, 'third' FROM {table};
              INSERT INTO {table} SELECT count(*) + 1, 'third-b' FROM {table};
            rollback: DELETE FROM {table} WHERE step LIKE 'third%'
        """
    )


def rows_in(target: str, query: str) -> list[tuple]:
    with target_systems()[target].session(atomic=False) as session:
        session["cursor"].execute(query)
        return [tuple(row) for row in session["cursor"].fetchall()]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("target", "transactional", "strategy"),
    [("app-db", None, "SHARED_TRANSACTION"), ("ext-pg", None, "MARKER"), ("ext-pg", False, "NON_TRANSACTIONAL")],
)
def test_multi_step_change_runs_its_steps_in_order(make_pipeline, unique, target, transactional, strategy):
    change_id, table = f"steps-{unique}", f"steps_{unique}"
    pipeline = make_pipeline({"main": {"0001_steps.yaml": steps_change(change_id, table, target=target, transactional=transactional)}})
    assert [step.label for step in pipeline.by_id[change_id].steps] == ["create", "second", "third"]

    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert rows_in(target, f"SELECT position, step FROM {table} ORDER BY position") == [
        (1, "create"),
        (2, "second"),
        (3, "third"),
        (4, "third-b"),
    ]
    applied = AuditEntry.objects.get(change_id=change_id, state=S.APPLIED)
    assert applied.transaction_strategy == strategy
    if strategy == "NON_TRANSACTIONAL":
        assert applied.details["steps"] == [{"step": name, "apply": "done"} for name in ("create", "second", "third")]


# -- verify queries ----------------------------------------------------------------------------------


def verify_change(change_id: str, *queries: str, target: str = "ext-pg") -> str:
    steps = "".join(f"  - apply: SELECT {n}\n    verify: {query}\n" for n, query in enumerate(queries, start=1))
    return f"id: {change_id}\nauthor: tests\ntarget: {target}\ntemplate: sql\ntransactional: false\nsteps:\n{steps}"


@pytest.mark.parametrize("target", ["app-db", "ext-pg"])
@pytest.mark.parametrize(
    ("query", "present"),
    [
        ("SELECT 1", True),
        ("SELECT 42", True),
        ("SELECT 'yes'", True),
        ("SELECT 1 = 1", True),
        ("SELECT 0", False),
        ("SELECT NULL", False),
        ("SELECT ''", False),
        ("SELECT 1 WHERE 1 = 0", False),
        ("SELECT 0, 1", False),
        ("SELECT 1, 0", True),
    ],
    ids=["one", "number", "text", "true", "zero", "null", "empty-text", "no-row", "first-column-false", "first-column-true"],
)
def test_verify_query_proves_the_effect_by_its_first_column(make_pipeline, unique, target, query, present):
    change = make_pipeline({"main": {"0001_v.yaml": verify_change(f"v-{unique}", query, target=target)}}).by_id[f"v-{unique}"]
    assert change.has_verify
    with target_systems()[target].session(atomic=False) as session:
        assert change.verify(session) is present


def test_verify_sees_the_live_target(make_pipeline, unique, external_pg):
    query = f"SELECT count(*) FROM information_schema.tables WHERE table_name = 'live_{unique}'"
    change = make_pipeline({"main": {"0001_v.yaml": verify_change(f"v-{unique}", query)}}).by_id[f"v-{unique}"]
    with target_systems()["ext-pg"].session(atomic=False) as session:
        assert change.verify(session) is False
    with psycopg.connect(external_pg, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE live_{unique} (id int)")
    with target_systems()["ext-pg"].session(atomic=False) as session:
        assert change.verify(session) is True


def test_change_verifies_only_if_every_step_verifies(make_pipeline, unique):
    change = make_pipeline({"main": {"0001_v.yaml": verify_change(f"v-{unique}", "SELECT 1", "SELECT 0", "SELECT 1")}}).by_id[f"v-{unique}"]
    with target_systems()["ext-pg"].session(atomic=False) as session:
        assert change.verify(session) is False


def test_change_with_a_step_without_verify_has_no_verify(make_pipeline, unique):
    source = verify_change(f"v-{unique}", "SELECT 1") + "  - apply: SELECT 2\n"
    change = make_pipeline({"main": {"0001_v.yaml": source}}).by_id[f"v-{unique}"]
    assert not change.has_verify


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("second_verify", "result", "latest"), [("SELECT 1", "RECONCILED", S.APPLIED), ("SELECT 0", "BLOCKED", S.STARTED)])
def test_started_multi_step_change_is_reconciled_only_if_every_step_verifies(make_pipeline, unique, second_verify, result, latest):
    change_id = f"v-{unique}"
    pipeline = make_pipeline({"main": {"0001_v.yaml": verify_change(change_id, "SELECT 1", second_verify)}})
    state_record(pipeline.by_id[change_id], S.STARTED)
    assert services.pipeline_plan().item(change_id).action == Action.RECONCILE

    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)

    [outcome] = run.results
    assert outcome["result"] == result
    assert services.pipeline_plan().item(change_id).latest_state == latest
    if latest == S.APPLIED:
        reconciled = AuditEntry.objects.get(change_id=change_id, state=S.APPLIED)
        assert reconciled.details["evidence"] == "verify probe found the effect present"
    else:
        assert run.status == Run.Status.BLOCKED
        assert outcome["reason"] == "needs a human: verify probe found the effect absent or partial"
        assert not AuditEntry.objects.filter(change_id=change_id, state=S.APPLIED).exists()
