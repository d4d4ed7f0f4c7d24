"""Governed migrations on a second database alias, not the one that holds the audit trail
(docs/django-migrations.md, "A second alias and MariaDB"): a database of the audit database's
vendor (a second SQLite file in the SQLite pass, a second PostgreSQL database in the PostgreSQL
pass). Atomic migrations take the MARKER strategy, the recorder row on that alias being the marker;
a failing non-atomic one needs a human; an undo renders and runs there, never on ``default``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

from changes_app import services
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.locks.backends import lock_backend
from changes_app.models import ChangeRequest, Run
from changes_app.pipeline.django_migrations import parse_change_id
from changes_app.targets import django_migrations as target_module
from tests.changes_app.django_migrations.aliases import columns_on, governed_on, recorded_on, same_vendor_database, tables_on
from tests.conftest import REPO
from tests.support.governance import person, policy
from tests.support.trails import ledger, local_operator, results, run_pipeline, table_exists

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "second"])

SHOP = [f"django:djm_shop.{name}" for name in ("0001_initial", "0002_item_price", "0003_item_sku", "0004_item_stock")]
NOTES = [f"django:djm_notes.{name}" for name in ("0001_initial", "0002_backfill", "0003_nonatomic")]
ALL = {parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}


@pytest.fixture(scope="module")
def second_database(django_db_setup, tmp_path_factory):
    database = same_vendor_database("second", tmp_path_factory.mktemp("second"))
    yield database
    database.close()


@pytest.fixture
def second(second_database, django_apps, settings):
    """The fixture apps governed on alias ``second`` only (an empty database); ``default`` holds the trail."""
    second_database.reset()
    pipeline = governed_on(settings, "second")
    assert pipeline.valid, pipeline.problems
    return second_database.settings


def test_on_a_second_alias_atomic_migrations_take_the_marker_and_nothing_lands_on_default(second):
    plan = services.pipeline_plan()
    assert {item.change.stage for item in plan.items if item.change.id in SHOP} == {"django:second"}
    assert plan.item(SHOP[0]).strategy.value == "MARKER"
    assert plan.item(NOTES[2]).strategy.value == "NON_TRANSACTIONAL"

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, (run.status_reason, [r.get("error") for r in run.results if r.get("error")])
    assert recorded_on("second") == ALL
    assert recorded_on("default") == set()
    assert not table_exists("djm_shop_item")  # the audit database is not the target
    assert columns_on("second", "djm_shop_item") == {"id", "name", "price", "sku", "stock"}
    assert ledger(SHOP[0]) == [(SHOP[0], "STARTED"), (SHOP[0], "APPLIED")]
    # The recorder row is the marker: a second insert of it conflicts, its absence reads as absent.
    target = target_module.DjangoMigrationTarget("second", {"alias": "second"})
    assert target.marker_lookup(change_id=SHOP[0], generation=0) is not None
    with pytest.raises(target_module.MarkerConflict):
        target.marker_insert({}, change_id=SHOP[0], generation=0, run_id="x", token=1)
    MigrationRecorder(connections["second"]).record_unapplied("djm_shop", "0004_item_stock")
    assert target.marker_lookup(change_id=SHOP[3], generation=0) is None


@pytest.mark.slow
def test_a_crash_after_the_second_alias_committed_is_settled_by_its_recorder_row(second, subprocess_env, tmp_path):
    """kill -9 after the migration and its recorder row committed on ``second``, before APPLIED:
    the next run reads the row (the marker) and records APPLIED, reconciled, without applying it again."""
    (tmp_path / "h8_second_settings.py").write_text(
        textwrap.dedent(
            """
            import json, os
            from settings import *  # noqa: F403  (tests/fixtures/django_apps/settings.py)
            DATABASES = {**DATABASES, "second": json.loads(os.environ["H8_SECOND_DATABASE"])}  # noqa: F405
            DATABASE_ROUTERS = ["tests.changes_app.django_migrations.aliases.FixtureAppsRouter"]
            FLAMINGOCK_DJANGO_MIGRATION_DATABASES = ["second"]
            """
        )
    )
    env = subprocess_env(
        FLAMINGOCK_CRASH_AT=f"after_target_commit:{SHOP[1]}",
        H8_SECOND_DATABASE=json.dumps({key: second[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}),
        DJANGO_SETTINGS_MODULE="h8_second_settings",
    )
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    child = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "flamingock", "run"], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert child.returncode == -9, child.stdout + child.stderr
    assert lock_backend().force_release() is not None

    assert ledger(SHOP[1]) == [(SHOP[1], "STARTED")]
    assert ("djm_shop", "0002_item_price") in recorded_on("second")
    assert "price" in columns_on("second", "djm_shop_item")

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, (run.status_reason, run.results)
    assert results(run)[SHOP[1]] == "RECONCILED"
    [applied] = [row for row in run.results if row["change_id"] == SHOP[1]]
    assert "present in second" in applied["reason"]
    assert ledger(SHOP[1]) == [(SHOP[1], "STARTED"), (SHOP[1], "APPLIED")]
    assert recorded_on("second") == ALL


def test_a_failing_non_atomic_migration_on_the_second_alias_needs_a_human_with_guidance(second, monkeypatch):
    import importlib

    nonatomic = importlib.import_module("djm_notes.migrations.0003_nonatomic").Migration

    def broken(apps, schema_editor):
        raise RuntimeError("the backfill found bad rows")

    monkeypatch.setattr(nonatomic.operations[1], "code", broken)
    run = run_pipeline()

    assert run.status == Run.Status.FAILED, run.status_reason
    assert results(run)[NOTES[2]] == "FAILED"
    assert ledger(NOTES[2]) == [(NOTES[2], "STARTED"), (NOTES[2], "FAILED")]
    assert "djm_notes_extra" in tables_on("second")  # its first operation committed: a partial effect
    assert ("djm_notes", "0003_nonatomic") not in recorded_on("second")
    item = services.pipeline_plan().item(NOTES[2])
    assert item.action.value == "MANUAL_INTERVENTION"
    assert "sqlmigrate djm_notes 0003_nonatomic --database second" in item.reason
    assert f"flamingock fix {NOTES[2]}" in item.reason

    monkeypatch.undo()
    with connections["second"].cursor() as cursor:
        cursor.execute("DROP TABLE djm_notes_extra")
    fixed = services.change_fix(
        change_id=NOTES[2], resolution="rolled-back", actor=local_operator(), reason="dropped the table by hand", source=Run.Source.CLI
    )
    assert fixed.status == Run.Status.SUCCEEDED, fixed.status_reason
    again = run_pipeline()
    assert again.status == Run.Status.SUCCEEDED, (again.status_reason, again.results)
    assert results(again)[NOTES[2]] == "APPLIED"
    assert recorded_on("second") == ALL


def test_an_undo_on_the_second_alias_shows_its_sql_and_runs_there(second, settings):
    assert run_pipeline().status == Run.Status.SUCCEEDED
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("second", "staging", 1)
    requester = person("requester", ENGINEER, operate=("second",))
    approver = person("approver", APPROVER, approve=("second",))

    request = services.request_create(kind=ChangeRequest.Kind.UNDO, change_id=SHOP[3], actor=requester.actor, reason="stock is wrong")
    request.refresh_from_db()

    [shown] = request.rendered["migrations"]
    assert (shown["alias"], shown["target"], shown["direction"], shown["error"]) == ("second", "second", "backwards", "")
    assert shown["vendor"] == connections["second"].vendor
    assert "djm_shop_item" in shown["sql"] and "stock" in shown["sql"]

    services.request_approve(request_id=request.pk, actor=approver.actor, inline=True)
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.EXECUTED, (request.status, request.status_reason)
    assert request.run.status == Run.Status.SUCCEEDED, request.run.status_reason
    assert columns_on("second", "djm_shop_item") == {"id", "name", "price", "sku"}
    assert ("djm_shop", "0004_item_stock") not in recorded_on("second")
    assert ledger(SHOP[3])[-2:] == [(SHOP[3], "ROLLED_BACK"), (SHOP[3], "SKIPPED")]
