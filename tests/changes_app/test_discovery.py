"""Validation collects every problem, each with file and line, before anything runs (docs/semantics.md §2).

A pipeline with problems is refused by every entry point: the services, the CLI (exit 2) and the
Django system check all report the same problems, and nothing is written.
"""

import io
import json

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.pipeline.discovery import Problem
from tests.conftest import manage
from tests.support.ledger import change_source

pytestmark = pytest.mark.django_db

VALID_JOURNAL_CHANGE = change_source("valid-journal", "journal")

#: One broken file per problem kind, with the problem it must raise: (code, line, message).
BROKEN = {
    "stage-one": {
        "0001_first.py": change_source("twice", "journal"),
        "0002_valid.py": VALID_JOURNAL_CHANGE,
        "add_thing.py": "x = 1\n",
        "0003_order.yaml": "id: declared-order\nauthor: t\ntarget: app-db\ntemplate: sql\norder: '0004'\napply: SELECT 1\n",
        "0004_target.yaml": "id: no-target\nauthor: t\ntarget: nowhere\ntemplate: sql\napply: SELECT 1\n",
        "0005_no_apply.py": "from changes_app.definitions import Change\n\n\nclass NoApply(Change):\n    id = 'no-apply'\n    author = 't'\n    target = 'app-db'\n",
        "0006_broken.yaml": "id: broken\nauthor: t\n  target: [app-db\n",
        "0007_template.yaml": "id: no-template\nauthor: t\ntarget: app-db\ntemplate: nosuch\napply: SELECT 1\n",
        "0008_tx.yaml": "id: tx-journal\nauthor: t\ntarget: journal\ntemplate: sql\ntransactional: true\napply: SELECT 1\n",
        "0009_concurrently.yaml": (
            "id: concurrently\nauthor: t\ntarget: ext-pg\ntemplate: sql\napply: |\n  CREATE TABLE c (id int);\n  CREATE INDEX CONCURRENTLY c_idx ON c (id);\n"
        ),
        "0010_redis.py": "from changes_app.definitions import Change\n\n\nclass AsksRedis(Change):\n    id = 'asks-redis'\n    author = 't'\n    target = 'app-db'\n\n    def apply(self, redis):\n        pass\n",
    },
    "stage-two": {"0001_again.yaml": "id: twice\nauthor: t\ntarget: app-db\ntemplate: sql\napply: SELECT 1\n"},
}
EXPECTED = [
    # (file, code, line)
    ("0003_order.yaml", "conflicting-order", 5),
    ("0004_target.yaml", "unknown-target", 3),
    ("0005_no_apply.py", "missing-apply", 4),
    ("0006_broken.yaml", "malformed-yaml", 3),
    ("0007_template.yaml", "unknown-template", 4),
    ("0008_tx.yaml", "not-transactional-target", 5),
    ("0009_concurrently.yaml", "template", 5),
    ("0010_redis.py", "unknown-dependency", 9),
    ("add_thing.py", "bad-order", 1),
    ("0001_again.yaml", "duplicate-id", 1),
]


def where(problem: Problem) -> tuple[str, str, int]:
    return (problem.path.rsplit("/", 1)[-1], problem.code, problem.line)


@pytest.fixture
def broken(make_pipeline):
    return make_pipeline(BROKEN)


def test_every_problem_of_the_pipeline_is_reported_together(broken):
    assert not broken.valid
    assert [where(problem) for problem in broken.problems] == EXPECTED
    for problem in broken.problems:
        assert str(problem).startswith(f"{problem.path}:{problem.line}: ")


def test_invalid_pipeline_cannot_be_planned(broken):
    with pytest.raises(services.PipelineInvalid) as raised:
        services.pipeline_plan()
    assert [where(problem) for problem in raised.value.problems] == EXPECTED


def test_invalid_pipeline_creates_no_run_and_writes_nothing(broken, journal):
    with pytest.raises(services.PipelineInvalid) as raised:
        services.run_create(actor=cli_actor(), source=Run.Source.CLI)
    assert f"the pipeline has {len(EXPECTED)} problem(s)" in str(raised.value)
    with pytest.raises(services.PipelineInvalid):
        services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert not Run.objects.exists()
    assert not AuditEntry.objects.exists()
    assert journal.entries() == []


def call_cli(*args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("flamingock", *args, stdout=stdout, stderr=stderr)
    return exited.value.code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("subcommand", ["run", "validate", "plan"])
def test_cli_exits_2_and_prints_every_problem_with_path_and_line(broken, journal, subcommand):
    code, _, stderr = call_cli(subcommand)
    assert code == 2
    for problem in broken.problems:
        assert f"{problem.path}:{problem.line}: {problem.message} [{problem.code}]" in stderr
    assert not Run.objects.exists() and not AuditEntry.objects.exists()
    assert journal.entries() == []


def test_cli_json_lists_every_problem(broken):
    code, stdout, _ = call_cli("validate", "--json")
    data = json.loads(stdout)
    assert code == data["exit_code"] == 2
    assert [(p["path"], p["code"], p["line"]) for p in data["problems"]] == [(p.path, p.code, p.line) for p in broken.problems]


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["run", "validate"])
def test_cli_in_a_child_process_exits_2_on_an_invalid_pipeline(broken, subprocess_env, journal, subcommand):
    result = manage("flamingock", subcommand, env=subprocess_env())
    assert result.returncode == 2, result.stdout + result.stderr
    for problem in broken.problems:
        assert f"{problem.path}:{problem.line}: {problem.message} [{problem.code}]" in result.stderr
    assert not Run.objects.exists() and not AuditEntry.objects.exists()
    assert journal.entries() == []


def test_system_check_reports_the_same_problems(broken):
    errors = [error for error in checks.run_checks(tags=["flamingock"]) if error.id.startswith("flamingock.")]
    assert [error.id for error in errors] == [f"flamingock.{code}" for _, code, _ in EXPECTED]
    assert [error.msg for error in errors] == [str(problem) for problem in broken.problems]
    assert all(error.level == checks.ERROR for error in errors)


def test_manage_check_fails_on_an_invalid_pipeline(broken):
    with pytest.raises(SystemCheckError) as raised:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    for problem in broken.problems:
        assert f"{problem.path}:{problem.line}" in str(raised.value)


def test_system_check_is_silent_on_a_valid_pipeline(make_pipeline):
    make_pipeline({"main": {"0001_valid.py": VALID_JOURNAL_CHANGE}})
    assert [error for error in checks.run_checks(tags=["flamingock"]) if error.id.startswith("flamingock.")] == []


# -- one test per problem kind -------------------------------------------------------------------


@pytest.fixture
def problem_of(make_pipeline):
    """``problem_of({"0001_x.yaml": "..."})``: the one problem of a stage made of these files."""

    def only(files: dict[str, str], **stages: dict[str, str]) -> Problem:
        pipeline = make_pipeline({"main": files, **stages})
        assert len(pipeline.problems) == 1, pipeline.problems
        return pipeline.problems[0]

    return only


def yaml_change(change_id: str = "c", *, target: str = "app-db", apply: str = "SELECT 1", **extra: str) -> str:
    lines = [f"id: {change_id}", "author: tests", f"target: {target}", "template: sql", *(f"{key}: {value}" for key, value in extra.items())]
    return "\n".join([*lines, f"apply: {apply}"]) + "\n"


def test_duplicate_id_across_stages_names_the_first_definition(problem_of):
    problem = problem_of({"0001_a.py": change_source("same", "journal")}, other={"0001_b.yaml": yaml_change("same")})
    assert (problem.code, problem.line) == ("duplicate-id", 1)
    assert problem.path.endswith("/0001_b.yaml")
    first = problem.message.split("first defined at ")[1].rstrip(")")
    assert first.endswith("/0001_a.py:4")
    assert problem.message.startswith("duplicate change id 'same'")


def test_duplicate_id_within_a_stage_is_reported(problem_of):
    problem = problem_of({"0001_a.yaml": yaml_change("same"), "0002_b.yaml": yaml_change("same")})
    assert (problem.code, problem.line) == ("duplicate-id", 1)
    assert problem.path.endswith("/0002_b.yaml")


def test_file_name_without_order_prefix_is_reported(problem_of):
    problem = problem_of({"add_status.yaml": yaml_change()})
    assert (problem.code, problem.line) == ("bad-order", 1)
    assert problem.message == "file name 'add_status.yaml' must start with a numeric order prefix, like 0001_name"


def test_declared_order_disagreeing_with_the_prefix_is_reported_on_its_line(problem_of):
    problem = problem_of({"0007_status.yaml": yaml_change(order="'0008'")})
    assert (problem.code, problem.line) == ("conflicting-order", 5)
    assert problem.message == "declared order '0008' disagrees with the file name prefix '0007'"


def test_declared_order_agreeing_with_the_prefix_is_accepted(make_pipeline):
    pipeline = make_pipeline({"main": {"0007_status.yaml": yaml_change(order="'0007'")}})
    assert pipeline.valid and pipeline.by_id["c"].order == "0007"


def test_declared_order_of_a_python_change_is_checked_too(problem_of):
    source = change_source("py-order", "journal").replace("    author", "    order = '0002'\n    author")
    problem = problem_of({"0001_py.py": source})
    assert (problem.code, problem.line) == ("conflicting-order", 4)
    assert problem.message == "declared order '0002' disagrees with the file name prefix '0001'"


def test_same_order_prefix_twice_in_a_stage_is_reported(problem_of):
    problem = problem_of({"0001_a.yaml": yaml_change("a"), "0001_b.yaml": yaml_change("b")})
    assert problem.code == "conflicting-order"
    assert problem.message.startswith("order 0001 is used twice in stage 'main'")


def test_unknown_target_is_reported_on_its_line(problem_of):
    problem = problem_of({"0001_x.yaml": yaml_change(target="warehouse")})
    assert (problem.code, problem.line) == ("unknown-target", 3)
    assert problem.message == "unknown target system 'warehouse' (known: app-db, ext-pg, journal)"


def test_python_change_without_apply_is_reported_at_its_class(problem_of):
    source = "from changes_app.definitions import Change\n\n\nclass NoApply(Change):\n    id = 'x'\n    author = 't'\n    target = 'app-db'\n"
    problem = problem_of({"0001_x.py": source})
    assert (problem.code, problem.line, problem.message) == ("missing-apply", 4, "NoApply has no apply method")


def test_yaml_change_without_apply_or_steps_is_reported(problem_of):
    problem = problem_of({"0001_x.yaml": "id: x\nauthor: t\ntarget: app-db\ntemplate: sql\nrollback: SELECT 1\n"})
    assert (problem.code, problem.line, problem.message) == ("missing-apply", 1, "a YAML change needs 'apply' or 'steps'")


def test_malformed_yaml_is_reported_on_the_line_of_the_error(problem_of):
    problem = problem_of({"0001_x.yaml": "id: x\nauthor: t\ntarget: app-db\ntemplate: sql\napply: [SELECT 1\nrollback: x\n"})
    assert problem.code == "malformed-yaml"
    assert problem.line == 6
    assert problem.message.startswith("malformed YAML: ")


def test_yaml_that_is_not_a_mapping_is_reported(problem_of):
    problem = problem_of({"0001_x.yaml": "- id: x\n- author: t\n"})
    assert (problem.code, problem.line) == ("malformed-yaml", 1)
    assert "must be a mapping" in problem.message


def test_unknown_template_is_reported_on_its_line(problem_of):
    problem = problem_of({"0001_x.yaml": "id: x\nauthor: t\ntarget: app-db\ntemplate: mongo\napply: x\n"})
    assert (problem.code, problem.line) == ("unknown-template", 4)
    assert problem.message.startswith("unknown template 'mongo' (known: ")
    assert "sql" in problem.message.removeprefix("unknown template 'mongo' (known: ").rstrip(")").split(", ")


def test_transactional_true_on_a_non_transactional_target_is_reported(problem_of):
    source = change_source("tx", "journal", transactional=True)
    problem = problem_of({"0001_x.py": source})
    assert (problem.code, problem.line) == ("not-transactional-target", 4)
    assert problem.message == "'transactional: true' but target 'journal' (generic) cannot run changes in a transaction"


def test_create_index_concurrently_in_a_transactional_change_is_reported(problem_of):
    apply = "|\n  CREATE TABLE c (id int);\n  CREATE INDEX CONCURRENTLY c_idx ON c (id);"
    problem = problem_of({"0001_x.yaml": yaml_change(target="ext-pg", apply=apply)})
    assert (problem.code, problem.line) == ("template", 5)
    assert problem.message == (
        "'CREATE INDEX CONCURRENTLY c_idx ON c (id);' cannot run inside a transaction on postgresql: declare 'transactional: false'"
    )


@pytest.mark.postgres
def test_create_index_concurrently_on_the_postgresql_audit_database_is_reported(problem_of):
    problem = problem_of({"0001_x.yaml": yaml_change(apply="CREATE INDEX CONCURRENTLY c_idx ON c (id)")})
    assert (problem.code, problem.line) == ("template", 5)
    assert "cannot run inside a transaction on postgresql" in problem.message


def test_create_index_concurrently_in_a_later_step_is_reported_on_the_steps_line(problem_of):
    source = (
        "id: x\nauthor: t\ntarget: ext-pg\ntemplate: sql\nsteps:\n"
        "  - apply: CREATE TABLE c (id int)\n"
        "  - apply: create unique index concurrently c_idx on c (id)\n"
    )
    problem = problem_of({"0001_x.yaml": source})
    assert (problem.code, problem.line) == ("template", 5)
    assert "cannot run inside a transaction on postgresql" in problem.message


def test_create_index_concurrently_is_accepted_when_declared_non_transactional(make_pipeline):
    apply = "CREATE INDEX CONCURRENTLY c_idx ON c (id)"
    pipeline = make_pipeline({"main": {"0001_x.yaml": yaml_change(target="ext-pg", apply=apply, transactional="false")}})
    assert pipeline.valid, pipeline.problems
    assert pipeline.by_id["c"].transactional is False


def test_dependency_the_target_does_not_offer_is_reported_at_the_method(problem_of):
    source = "from changes_app.definitions import Change\n\n\nclass C(Change):\n    id = 'x'\n    author = 't'\n    target = 'app-db'\n\n    def apply(self, redis):\n        pass\n"
    problem = problem_of({"0001_x.py": source})
    assert (problem.code, problem.line) == ("unknown-dependency", 9)
    assert problem.message == "C.apply asks for redis; target 'app-db' offers connection, context, cursor, using"


def test_dependency_asked_by_rollback_is_checked_too(problem_of):
    source = change_source("x", "journal") + "\n    def rollback(self, cursor):\n        pass\n"
    problem = problem_of({"0001_x.py": source})
    assert problem.code == "unknown-dependency"
    assert problem.message == "TheChange.rollback asks for cursor; target 'journal' offers context, journal"
    assert problem.line == source.splitlines().index("    def rollback(self, cursor):") + 1


def test_syntax_error_is_reported_on_its_line(problem_of):
    problem = problem_of({"0001_x.py": "from changes_app.definitions import Change\n\n\nclass C(Change)\n    id = 'x'\n"})
    assert (problem.code, problem.line) == ("import-error", 4)
    assert problem.message.startswith("syntax error: ")


def test_missing_author_is_reported(problem_of):
    problem = problem_of({"0001_x.yaml": "id: x\ntarget: app-db\ntemplate: sql\napply: SELECT 1\n"})
    assert (problem.code, problem.message) == ("missing-author", "missing or empty 'author'")


def test_unknown_recovery_is_reported_on_its_line(problem_of):
    problem = problem_of({"0001_x.yaml": yaml_change(recovery="RETRY_FOREVER")})
    assert (problem.code, problem.line) == ("bad-recovery", 5)
    assert problem.message == "recovery 'RETRY_FOREVER' is not one of MANUAL_INTERVENTION, ALWAYS_RETRY"
