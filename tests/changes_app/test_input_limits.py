"""Input limits of discovery (docs/writing-changes.md, Limits; docs/semantics.md §13.2).

- A change id is printable ASCII from ``[A-Za-z0-9._:-]``, at most 200 characters, and does not start
  with the reserved ``django:``. An id breaking the rule is a problem with file and line: ``plan`` and
  ``run`` exit 2 and write nothing (no run row). An id already in the ledger that breaks it still
  plans, with a notice.
- A change file is at most ``FLAMINGOCK_MAX_CHANGE_BYTES`` (256 KiB), checked before it is parsed or
  imported; YAML anchors and aliases are refused (an alias bomb is a few lines); YAML nests at most
  32 levels. Each is a problem naming the file.
- Planning a change of the maximum size takes well under a second.
"""

from __future__ import annotations

import random
import time

import pytest
import sqlparse

from audit_app.models import ChangeState
from changes_app import services
from changes_app.models import ChangeRecord, Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.targets.templates import split_statements
from tests.support.trails import cli, sql_change, written

pytestmark = pytest.mark.django_db(transaction=True)

MAX_CHANGE_BYTES = 256 * 1024

#: name -> the id as written in a YAML double-quoted scalar / a Python string literal (escapes), and
#: whether the file holds the character itself rather than an escape.
BAD_IDS = {
    "nul": "bad\\0id",
    "bidi-override": "evil\\u202eexe.ok",
    "zero-width-space": "zero\\u200bwidth",
    "cyrillic-homoglyph": "add-\\u0441olumn",  # "с" is CYRILLIC SMALL LETTER ES
    "too-long": "a" * 201,
    "reserved-prefix": "django:auth.0001_initial",
    "space": "has space",
    "empty-after-strip": "tab\\there",
}


def yaml_change(escaped_id: str) -> str:
    return f'author: tests\nid: "{escaped_id}"\ntarget: app-db\ntemplate: sql\napply: SELECT 1\n'


def python_change(escaped_id: str) -> str:
    return (
        "from changes_app.definitions import Change\n\n\n"
        "class Bad(Change):\n"
        '    author = "tests"\n'
        f'    id = "{escaped_id}"\n'
        '    target = "journal"\n\n'
        "    def apply(self, journal):\n"
        "        journal.append('x')\n"
    )


@pytest.mark.parametrize("name", sorted(BAD_IDS))
@pytest.mark.parametrize("kind", ["yaml", "python"])
def test_a_change_id_breaking_the_rule_is_refused_by_plan_and_run_naming_file_and_line(make_pipeline, unique, name, kind):
    escaped = BAD_IDS[name]
    file_name, source, line = ("0002_bad.yaml", yaml_change(escaped), 2) if kind == "yaml" else ("0002_bad.py", python_change(escaped), 6)
    make_pipeline({"main": {"0001_ok.yaml": sql_change(f"ok-{unique}", "SELECT 1"), file_name: source}})
    before = written()

    for args in (("plan", "--json"), ("run", "--json"), ("plan",), ("run",)):
        result = cli(*args)
        assert result.code == 2, (args, result)
        if "--json" in args:
            problems = result.json()["problems"]
            assert [(p["code"], p["path"].rsplit("/", 1)[-1], p["line"]) for p in problems] == [("bad-id", file_name, line)], problems
        else:
            assert f"{file_name}:{line}: " in result.err + result.out, result

    assert written() == before
    assert not Run.objects.exists()


def test_the_id_rule_allows_every_character_of_its_alphabet_and_200_characters(make_pipeline):
    ids = ["Az09._:-ok", "x" * 200, "djangoish:not-reserved", "Django:is-not-the-prefix"]
    pipeline = make_pipeline({"main": {f"000{n}_ok.yaml": yaml_change(change_id) for n, change_id in enumerate(ids, 1)}})
    assert pipeline.valid, [str(problem) for problem in pipeline.problems]
    assert [change.id for change in pipeline.stages[0].changes] == ids


@pytest.mark.parametrize("model", ["state", "record"])
def test_an_id_already_recorded_that_breaks_the_rule_still_plans_with_a_notice(make_pipeline, unique, model):
    legacy = f"legacy id {unique}"
    if model == "state":
        ChangeState.objects.create(change_id=legacy, state="APPLIED", entry_id=0, stage="main", order="0001", target="app-db")
    else:
        ChangeRecord.objects.create(
            change_id=legacy,
            stage="main",
            order="0001",
            author="t",
            target="app-db",
            kind="template",
            path="x",
            source="",
            checksum="",
            transactional=True,
            recovery="MANUAL_INTERVENTION",
        )
    pipeline = make_pipeline({"main": {"0001_legacy.yaml": yaml_change(legacy)}})
    assert pipeline.valid, [str(problem) for problem in pipeline.problems]
    assert any(legacy in notice and "0001_legacy.yaml:2" in notice for notice in pipeline.notices), pipeline.notices

    result = cli("plan", "--json")
    assert result.code == 0, result
    assert any(legacy in notice for notice in result.json()["notices"])


# -- file size, YAML aliases and depth -------------------------------------------------------------------


def only_problem(pipeline) -> tuple[str, str, str]:
    assert len(pipeline.problems) == 1, [str(problem) for problem in pipeline.problems]
    problem = pipeline.problems[0]
    return problem.code, problem.path.rsplit("/", 1)[-1], problem.message


def test_a_change_file_over_the_size_limit_is_a_problem_before_it_is_parsed_or_imported(make_pipeline, unique, tmp_path):
    marker = tmp_path / "imported"
    padding = "#" * MAX_CHANGE_BYTES
    python = f"open({str(marker)!r}, 'w').close()\n{padding}\n" + python_change(f"big-{unique}")
    yaml = sql_change(f"big-yaml-{unique}", "SELECT 1") + f"description: {'d' * MAX_CHANGE_BYTES}\n"
    for stage, name, source in (("py", "0001_big.py", python), ("yaml", "0001_big.yaml", yaml)):
        pipeline = make_pipeline({stage: {name: source}}, replace=True)
        code, path, message = only_problem(pipeline)
        assert (code, path) == ("file-too-large", name)
        assert str(MAX_CHANGE_BYTES) in message
    assert not marker.exists(), "the oversized Python change was imported"


def test_the_size_limit_is_a_setting(make_pipeline, unique, settings):
    settings.FLAMINGOCK_MAX_CHANGE_BYTES = 100
    pipeline = make_pipeline({"main": {"0001_a.yaml": sql_change(f"a-{unique}", "SELECT 1" + " " * 100)}})
    assert only_problem(pipeline)[:2] == ("file-too-large", "0001_a.yaml")


LETTERS = "abcdef"
ALIAS_BOMB = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]" for previous, name in zip(LETTERS, LETTERS[1:], strict=False)
]


def test_a_yaml_alias_bomb_is_refused_quickly(make_pipeline, unique):
    """Six lines expanding to 9**6 strings: refused before anything is built."""
    source = f"id: bomb-{unique}\nauthor: t\ntarget: app-db\ntemplate: sql\napply: SELECT 1\ndescription:\n" + "\n".join(
        "  " + line for line in ALIAS_BOMB
    )
    started = time.perf_counter()
    pipeline = make_pipeline({"main": {"0001_bomb.yaml": source}})
    elapsed = time.perf_counter() - started
    code, path, message = only_problem(pipeline)
    assert (code, path) == ("yaml-alias", "0001_bomb.yaml")
    assert pipeline.problems[0].line == 7
    assert elapsed < 1, elapsed


def test_any_yaml_anchor_or_alias_is_refused(make_pipeline, unique):
    source = f"id: &the-id anchored-{unique}\nauthor: t\ntarget: app-db\ntemplate: sql\napply: SELECT 1\ndescription: *the-id\n"
    pipeline = make_pipeline({"main": {"0001_anchor.yaml": source}})
    assert only_problem(pipeline)[:2] == ("yaml-alias", "0001_anchor.yaml")
    assert pipeline.problems[0].line == 1


def test_yaml_nested_deeper_than_32_levels_is_refused(make_pipeline, unique):
    base = f"id: deep-{unique}\nauthor: t\ntarget: app-db\ntemplate: sql\napply: SELECT 1\n"
    ok = make_pipeline({"main": {"0001_deep.yaml": base + "verify: " + "[" * 31 + "]" * 31 + "\n"}})
    assert only_problem(ok)[0] == "template"  # 32 levels (the document and 31 lists) parse; the template then wants SQL text
    for depth in (33, 20_000):
        deep = make_pipeline({"main": {"0001_deep.yaml": base + "description: " + "[" * depth + "]" * depth + "\n"}}, replace=True)
        assert only_problem(deep)[:2] == ("yaml-too-deep", "0001_deep.yaml")


# -- the time to plan a change of the maximum size ----------------------------------------------------------


def big_sql(size: int) -> str:
    statement = "INSERT INTO big_{n} (id, name) VALUES ({n}, 'row {n} -- not a comment; still a string');\n"
    lines, total, n = [], 0, 0
    while total < size:
        line = statement.format(n=n)
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines)


def test_planning_changes_of_the_maximum_size_takes_under_a_second(make_pipeline, unique, settings):
    sql = big_sql(MAX_CHANGE_BYTES - 2000)
    yaml = f"id: big-sql-{unique}\nauthor: t\ntarget: app-db\ntemplate: sql\napply: |\n" + "".join(f"  {line}\n" for line in sql.splitlines())
    python = python_change(f"big-py-{unique}") + "\n" + "".join(f"# {line}\n" for line in sql.splitlines())
    yaml, python = yaml[: MAX_CHANGE_BYTES - 2], python[: MAX_CHANGE_BYTES - 2]
    yaml = yaml[: yaml.rindex("\n") + 1]
    python = python[: python.rindex("\n") + 1]
    assert MAX_CHANGE_BYTES - 200 < len(yaml.encode()) <= MAX_CHANGE_BYTES
    assert MAX_CHANGE_BYTES - 200 < len(python.encode()) <= MAX_CHANGE_BYTES
    make_pipeline({"main": {"0001_big.yaml": yaml, "0002_big.py": python}})

    started = time.perf_counter()
    pipeline = pipeline_load(reload=True)
    plan = services.pipeline_plan()
    elapsed = time.perf_counter() - started

    assert pipeline.valid, [str(problem) for problem in pipeline.problems]
    assert [item.change.id for stage in plan.stages for item in stage.items] == [f"big-sql-{unique}", f"big-py-{unique}"]
    assert pipeline.by_id[f"big-sql-{unique}"].steps[0].preview.count(";\n") > 1000  # really split into statements
    assert elapsed < 1, f"discovery and plan of two {MAX_CHANGE_BYTES}-byte changes took {elapsed:.2f}s"


def _sqlparse_split(sql: str) -> list[str]:
    """How scripts were split before the linear pass: sqlparse, keeping statements with code."""
    return [s.strip() for s in sqlparse.split(sql) if sqlparse.format(s, strip_comments=True).strip().rstrip(";").strip()]


SQL_PIECES = [
    *("SELECT 1", "INSERT INTO t VALUES (1, 'x')", "CREATE TABLE IF NOT EXISTS t (a int)", "a/b", "a-b", "1.5", "x1", "1e5", "é"),
    *(";", ";;", " ", "\t", "\n", "\r\n", "\x0b", "\u00a0", "(", ")", "+", "-", "*", "||", "//", ":p", "@v", "%(a)s"),
    *("-- c;\n", "-- c", "-- c\r", "--\n", "+--x\n", "/* x; */", "/* a *//* b */", "/*+ h */", "--+ h\n", "--", "/*", "*/"),
    *("'a;b'", "'it''s;'", '"q;"', "`b;`", "E'x'", "'", '"', "$$", "$x$ ; $x$", "#", "# c\n", "\\", "[x;y]"),
    *("BEGIN", "END", "CASE", "IF", "CREATE", "DECLARE", "GO", "begin transaction"),
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a=1; END",
]


@pytest.mark.parametrize("seed", range(2))
def test_statements_are_split_exactly_as_sqlparse_splits_them(seed):
    """The linear pass gives sqlparse's statements, or leaves the script to sqlparse."""
    chooser = random.Random(seed)
    for _ in range(1000):
        sql = "".join(chooser.choice(SQL_PIECES) for _ in range(chooser.randint(0, 12)))
        assert split_statements(sql, "postgresql") == _sqlparse_split(sql), repr(sql)
