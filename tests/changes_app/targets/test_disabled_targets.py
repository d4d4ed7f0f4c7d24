"""The rule for systems that are not there: a target system configured with ``"enabled": false`` has
its stages left out of the pipeline, and ``plan`` and ``run`` say so. The example settings enable
each example system only when its environment variable is set, so the demo runs anywhere."""

import json
from io import StringIO

import pytest
from django.core.management import call_command

from changes_app.pipeline.discovery import pipeline_load
from tests.changes_app.targets.support import results, run_pipeline
from tests.conftest import manage

pytestmark = pytest.mark.django_db(transaction=True)

NOTICE = "stage 'flags' is left out: target system 'flags' (redis, FLAMINGOCK_TEST_REDIS_URL) is disabled (\"enabled\": false)"


def two_stages(make_pipeline, unique):
    return make_pipeline(
        {
            "main": {
                "0001_table.yaml": f"""
                    id: table-{unique}
                    author: tests
                    target: app-db
                    template: sql
                    apply: CREATE TABLE t_{unique} (id integer)
                """
            },
            "flags": {
                "0001_flag.yaml": f"""
                    id: flag-{unique}
                    author: tests
                    target: flags
                    template: redis
                    apply: SET flk:{unique}:flag on
                    rollback: DEL flk:{unique}:flag
                """
            },
        }
    )


def disable(settings, monkeypatch, name: str) -> None:
    configured = {**settings.FLAMINGOCK_TARGET_SYSTEMS, name: {**settings.FLAMINGOCK_TARGET_SYSTEMS[name], "enabled": False}}
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured
    monkeypatch.setenv("FLAMINGOCK_TARGETS_JSON", json.dumps(configured))


def cli(*args: str) -> str:
    out = StringIO()
    call_command("flamingock", *args, stdout=out)
    return out.getvalue()


def test_stage_on_a_disabled_system_is_left_out_and_plan_and_run_say_so(make_pipeline, unique, settings, monkeypatch, redis_client):
    disable(settings, monkeypatch, "flags")
    two_stages(make_pipeline, unique)

    pipeline = pipeline_load()

    assert [stage.name for stage in pipeline.stages] == ["main"]
    assert [stage.name for stage in pipeline.left_out] == ["flags"]
    assert pipeline.notices == [NOTICE]
    assert f"note: {NOTICE}" in cli("plan")
    assert json.loads(cli("plan", "--json"))["notices"] == [NOTICE]
    ran = json.loads(cli("run", "--json"))
    assert ran["notices"] == [NOTICE]
    assert [row["change_id"] for row in ran["results"]] == [f"table-{unique}"]
    assert redis_client.exists(f"flk:{unique}:flag") == 0


def test_applied_changes_of_a_left_out_stage_are_not_missing_from_code(make_pipeline, unique, settings, monkeypatch, redis_client):
    two_stages(make_pipeline, unique)
    assert set(results(run_pipeline()).values()) == {"APPLIED"}

    disable(settings, monkeypatch, "flags")
    pipeline_load(reload=True)

    assert json.loads(cli("plan", "--json"))["missing_from_code"] == []
    assert "valid: everything is applied" in cli("validate")


def test_enabled_must_be_true_or_false(make_pipeline, unique, settings, monkeypatch):
    configured = {**settings.FLAMINGOCK_TARGET_SYSTEMS, "flags": {**settings.FLAMINGOCK_TARGET_SYSTEMS["flags"], "enabled": "no"}}
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured

    pipeline = make_pipeline({"main": {}})

    assert [str(problem) for problem in pipeline.problems] == ["target system 'flags': 'enabled' must be true or false [target-config]"]


def test_example_settings_leave_out_each_stage_whose_environment_is_absent(subprocess_env, mariadb_url):
    env = subprocess_env()
    # The settings as shipped, on a machine where no example system is named in the environment.
    for name in (
        "FLAMINGOCK_TARGETS_JSON",
        "FLAMINGOCK_STAGES",
        "FLAMINGOCK_DISCOVER_APPS",
        "REDIS_URL",
        "FLAMINGOCK_RABBITMQ_URL",
        "FLAMINGOCK_MARIADB_URL",
        "FLAMINGOCK_SAAS_URL",
    ):
        env.pop(name, None)

    bare = manage("flamingock", "plan", "--json", env=env)

    assert bare.returncode == 0, bare.stderr
    plan = json.loads(bare.stdout)
    assert {change["stage"] for change in plan["changes"]} == {"examples"}
    assert [notice.split(":")[0] for notice in plan["notices"]] == [
        "stage 'feature-flags' is left out",
        "stage 'order-events' is left out",
        "stage 'billing' is left out",
        "stage 'payments' is left out",
    ]
    assert "target system 'billing-db' (mysql, FLAMINGOCK_MARIADB_URL) is disabled" in plan["notices"][2]

    with_mariadb = manage("flamingock", "plan", "--json", env={**env, "FLAMINGOCK_MARIADB_URL": mariadb_url})

    assert with_mariadb.returncode == 0, with_mariadb.stderr
    plan = json.loads(with_mariadb.stdout)
    billing = [(change["id"], change["strategy"]) for change in plan["changes"] if change["stage"] == "billing"]
    assert billing == [
        ("billing-create-invoices", "NON_TRANSACTIONAL"),
        ("billing-import-invoices", "MARKER"),
        ("billing-add-invoice-currency", "NON_TRANSACTIONAL"),
        ("billing-backfill-invoice-currency", "MARKER"),
    ]
    assert len(plan["notices"]) == 3
