"""Bad templates of every kind are validation problems with file and line, found before anything runs;
and MySQL DDL is non-transactional by inference, never by a declared ``transactional: true``."""

import pytest

from changes_app.targets.redis import matches

pytestmark = pytest.mark.django_db


def problems_of(make_pipeline, source: str) -> list[tuple[str, int, str]]:
    pipeline = make_pipeline({"main": {"0001_change.yaml": source}})
    return [(problem.path.rsplit("/", 1)[-1], problem.line, problem.message) for problem in pipeline.problems]


def only_problem(make_pipeline, source: str) -> tuple[int, str]:
    found = problems_of(make_pipeline, source)
    assert len(found) == 1, found
    name, line, message = found[0]
    assert name == "0001_change.yaml"
    return line, message


HEADER = """
id: bad-{unique}
author: tests
target: {target}
template: {template}
"""


def header(unique: str, target: str, template: str) -> str:
    return HEADER.format(unique=unique, target=target, template=template)


def test_redis_unknown_command_is_a_problem_at_its_line(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "flags", "redis") + "apply: |\n  SET a 1\n  FLUSHALL\n")
    assert line == 5
    assert "apply: unknown or unsupported command 'FLUSHALL'" in message


def test_redis_wrong_arity_and_unquoted_yaml_booleans_are_problems(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "flags", "redis") + "apply: HSET k f1 v1 f2\n")
    assert (line, message) == (5, "apply: HSET takes field/value pairs: one value is missing")
    line, message = only_problem(make_pipeline, header(unique, "flags", "redis") + "apply:\n  - [SET, flag, on]\n")
    assert "True is not text or a number (quote on, off, yes, no, true and false)" in message


def test_redis_verify_runs_only_read_commands(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "flags", "redis") + "apply: SET k v\nverify:\n  - command: DEL k\n")
    assert line == 6
    assert "verify: unknown or unsupported command 'DEL'" in message


def test_multi_step_change_needs_a_rollback_on_every_step_but_the_last(make_pipeline, unique):
    source = header(unique, "flags", "redis") + "steps:\n  - apply: SET a 1\n  - apply: SET b 1\n    rollback: DEL b\n"
    line, message = only_problem(make_pipeline, source)
    assert (line, message) == (5, "step 1: missing 'rollback': if a later step fails, this one cannot be compensated")


def test_rabbitmq_wrong_types_unknown_options_and_bindings_in_verify_are_problems(make_pipeline, unique):
    found = problems_of(
        make_pipeline,
        header(unique, "bus", "rabbitmq") + "apply:\n  declare_queue: q\n  durable: 'yes'\n  ttl: 5\n",
    )
    assert [(line, message) for _, line, message in found] == [
        (5, "apply: declare_queue q: 'durable' must be true or false"),
        (5, "apply: declare_queue q: unknown option 'ttl' (it takes durable, auto_delete, exclusive, arguments)"),
    ]
    line, message = only_problem(
        make_pipeline,
        header(unique, "bus", "rabbitmq") + "apply: {bind_queue: q, exchange: x}\nrollback: {unbind_queue: q, exchange: x}\nverify: declared\n",
    )
    assert line == 7
    assert "verify cannot prove bind_queue q: AMQP can check that an exchange or a queue exists, not a binding" in message


def test_rabbitmq_operation_must_name_exactly_one_verb(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "bus", "rabbitmq") + "apply: {purge_queue: q}\n")
    assert line == 5
    assert message.startswith("apply: an operation names exactly one of declare_exchange")


def test_http_requests_are_checked_before_anything_runs(make_pipeline, unique):
    source = (
        header(unique, "api", "http")
        + "apply: {method: POST, path: 'https://elsewhere.example.com/x', expect: '201', headers: {Authorization: x}}\n"
        + "verify: {method: POST, path: /x}\n"
    )
    found = [(line, message) for _, line, message in problems_of(make_pipeline, source)]
    assert found == [
        (5, "apply: 'path' must be a path starting with '/', relative to the target's base URL (got 'https://elsewhere.example.com/x')"),
        (5, "apply: 'expect' must be an HTTP status (100-599) or a list of them"),
        (5, "apply: 'headers' may not set Authorization, Cookie or Idempotency-Key: they come from the target's settings"),
        (6, "verify: a verify request must only read: GET or HEAD, not POST"),
    ]


def test_template_on_a_target_of_another_kind_is_a_problem(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "api", "redis") + "apply: SET k v\n")
    assert (line, message) == (4, "the redis template needs a redis target; 'api' is a http target")


def test_declaring_transactional_on_a_non_transactional_kind_is_a_problem(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "flags", "redis") + "transactional: true\napply: SET k v\n")
    assert line == 5
    assert message == "'transactional: true' but target 'flags' (redis) cannot run changes in a transaction"


def test_mysql_ddl_declared_transactional_is_refused(make_pipeline, unique):
    source = header(unique, "billing", "sql") + "transactional: true\napply: |\n  INSERT INTO t VALUES (1);\n  ALTER TABLE t ADD COLUMN c int;\n"
    line, message = only_problem(make_pipeline, source)
    assert line == 6
    assert message == "'ALTER TABLE t ADD COLUMN c int;' cannot run inside a transaction on mysql: declare 'transactional: false'"


def test_mysql_transactionality_is_inferred_from_the_sql(make_pipeline, unique):
    pipeline = make_pipeline(
        {
            "main": {
                "0001_ddl.yaml": header(unique, "billing", "sql").replace("bad-", "ddl-") + "apply: CREATE TABLE t (id int)\n",
                "0002_data.yaml": header(unique, "billing", "sql").replace("bad-", "data-") + "apply: INSERT INTO t VALUES (1)\n",
                "0003_declared.yaml": header(unique, "billing", "sql").replace("bad-", "declared-")
                + "transactional: false\napply: INSERT INTO t VALUES (2)\n",
            }
        }
    )
    assert pipeline.valid, pipeline.problems
    assert {change_id.split("-")[0]: change.transactional for change_id, change in pipeline.by_id.items()} == {
        "ddl": False,
        "data": True,
        "declared": False,
    }


def test_postgres_ddl_is_not_inferred_it_is_declared(make_pipeline, unique):
    line, message = only_problem(make_pipeline, header(unique, "ext-pg", "sql") + "apply: CREATE INDEX CONCURRENTLY i ON t (c)\n")
    assert "cannot run inside a transaction on postgresql: declare 'transactional: false'" in message


def test_redis_answers_compare_with_yaml_values_as_text():
    assert matches("3", 3)
    assert matches({"a": "1"}, {"a": 1})
    assert matches({"x", "y"}, ["y", "x"])
    assert matches(None, None)
    assert not matches(None, "")
    assert matches(1, True) and not matches(0, True)
