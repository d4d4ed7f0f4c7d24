"""Governed migrations on MariaDB, a second alias beside the audit database (docs/django-migrations.md,
"A second alias and MariaDB"): DDL commits at once there, so every migration is non-transactional,
atomic or not; a failure needs a human, with ``sqlmigrate`` guidance; what approvers see is MariaDB's
SQL, and an undo runs there. MariaDB must answer at 127.0.0.1:3306 (root, no password): the tests
fail loudly when it does not."""

from __future__ import annotations

import pytest
from django.db import connections
from django.db.migrations.loader import MigrationLoader

from changes_app import services
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRequest, Run, TargetSystem
from changes_app.pipeline.django_migrations import parse_change_id
from changes_app.services import rendering
from tests.changes_app.django_migrations.aliases import columns_on, governed_on, mariadb_database, recorded_on, tables_on
from tests.support.governance import person, policy
from tests.support.trails import ledger, local_operator, results, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mariadb"])

SHOP = [f"django:djm_shop.{name}" for name in ("0001_initial", "0002_item_price", "0003_item_sku", "0004_item_stock")]
NOTES = [f"django:djm_notes.{name}" for name in ("0001_initial", "0002_backfill", "0003_nonatomic")]
ALL = {parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}


@pytest.fixture(scope="module")
def mariadb_db(django_db_setup):
    database = mariadb_database("mariadb")
    yield database
    database.close()


@pytest.fixture
def mariadb(mariadb_db, django_apps, settings):
    """The fixture apps governed on alias ``mariadb`` only (an empty MariaDB database)."""
    mariadb_db.reset()
    pipeline = governed_on(settings, "mariadb")
    assert pipeline.valid, pipeline.problems
    assert connections["mariadb"].vendor == "mysql"
    return mariadb_db.settings


def test_on_mariadb_every_migration_is_non_transactional_and_applied_once(mariadb):
    plan = services.pipeline_plan()
    assert {plan.item(change_id).strategy.value for change_id in (*SHOP, *NOTES)} == {"NON_TRANSACTIONAL"}
    assert plan.item(SHOP[0]).change.migration.atomic  # atomic in Django, not in MariaDB's DDL

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, (run.status_reason, [r.get("error") for r in run.results if r.get("error")])
    assert set(results(run).values()) == {"APPLIED"}
    assert recorded_on("mariadb") == ALL
    assert recorded_on("default") == set()
    assert columns_on("mariadb", "djm_shop_item") == {"id", "name", "price", "sku", "stock"}
    with connections["mariadb"].cursor() as cursor:
        cursor.execute("SELECT text FROM djm_notes_note")
        assert cursor.fetchall() == (("first",),)  # the data migration ran once, there
    assert ledger(SHOP[0]) == [(SHOP[0], "STARTED"), (SHOP[0], "APPLIED")]
    assert run_pipeline().status == Run.Status.NO_CHANGES


def test_a_failing_migration_on_mariadb_needs_a_human_with_guidance_and_fix_lets_the_run_complete(mariadb):
    # A table in the way (made by hand): CREATE TABLE fails, and MariaDB offers no rollback of DDL.
    with connections["mariadb"].cursor() as cursor:
        cursor.execute("CREATE TABLE djm_shop_item (id integer PRIMARY KEY)")

    run = run_pipeline()

    assert run.status == Run.Status.FAILED, run.status_reason
    assert results(run)[SHOP[0]] == "FAILED"
    assert ledger(SHOP[0]) == [(SHOP[0], "STARTED"), (SHOP[0], "FAILED")]
    assert recorded_on("mariadb") == set()
    item = services.pipeline_plan().item(SHOP[0])
    assert item.action.value == "MANUAL_INTERVENTION"
    assert "sqlmigrate djm_shop 0001_initial --database mariadb" in item.reason
    assert f"flamingock fix {SHOP[0]}" in item.reason
    assert run_pipeline().status != Run.Status.SUCCEEDED  # nothing goes on without a person
    assert recorded_on("mariadb") == set()

    with connections["mariadb"].cursor() as cursor:
        cursor.execute("DROP TABLE djm_shop_item")
    fixed = services.change_fix(
        change_id=SHOP[0], resolution="rolled-back", actor=local_operator(), reason="dropped the stray table", source=Run.Source.CLI
    )
    assert fixed.status == Run.Status.SUCCEEDED, fixed.status_reason
    again = run_pipeline()
    assert again.status == Run.Status.SUCCEEDED, (again.status_reason, [r.get("error") for r in again.results if r.get("error")])
    assert recorded_on("mariadb") == ALL


def test_an_undo_on_mariadb_shows_mariadbs_sql_and_runs_there(mariadb, settings):
    assert run_pipeline().status == Run.Status.SUCCEEDED
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("mariadb", "staging", 1)
    requester = person("requester", ENGINEER, operate=("mariadb",))
    approver = person("approver", APPROVER, approve=("mariadb",))

    request = services.request_create(kind=ChangeRequest.Kind.UNDO, change_id=SHOP[3], actor=requester.actor, reason="stock is wrong")
    request.refresh_from_db()

    [shown] = request.rendered["migrations"]
    assert (shown["alias"], shown["vendor"], shown["direction"], shown["error"]) == ("mariadb", "mysql", "backwards", "")
    assert "ALTER TABLE `djm_shop_item` DROP COLUMN `stock`" in shown["sql"]
    assert not shown["sql"].startswith("BEGIN")  # MariaDB cannot roll back DDL: sqlmigrate shows no transaction

    services.request_approve(request_id=request.pk, actor=approver.actor, inline=True)
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.EXECUTED, (request.status, request.status_reason)
    assert request.run.status == Run.Status.SUCCEEDED, request.run.status_reason
    assert columns_on("mariadb", "djm_shop_item") == {"id", "name", "price", "sku"}
    assert ("djm_shop", "0004_item_stock") not in recorded_on("mariadb")
    assert "djm_shop_item" not in tables_on("default")


def test_a_request_is_rendered_against_its_own_alias_not_the_first_governed_one(mariadb, settings, monkeypatch):
    """Both aliases govern the apps: a request on ``mariadb`` shows MariaDB's SQL, one on ``default``
    the audit database's, each from one graph."""
    governed_on(settings, "default", "mariadb")
    services.target_systems_sync()
    built = []
    build_graph = MigrationLoader.build_graph
    monkeypatch.setattr(
        MigrationLoader, "build_graph", lambda self: (built.append(self.connection.alias if self.connection else None), build_graph(self))[1]
    )

    for kind, direction in ((ChangeRequest.Kind.UNDO, "backwards"), (ChangeRequest.Kind.APPLY, "forwards")):
        built.clear()
        on_mariadb = ChangeRequest(kind=kind, change_id=SHOP[3], target_system=TargetSystem.objects.get(name="mariadb"))
        [shown] = rendering.request_render(on_mariadb)["migrations"]
        assert (shown["alias"], shown["target"], shown["vendor"], shown["direction"]) == ("mariadb", "mariadb", "mysql", direction)
        assert "`djm_shop_item`" in shown["sql"] and "`stock`" in shown["sql"]
        assert built == ["mariadb"]  # one graph, the request's alias's

    on_default = ChangeRequest(kind=ChangeRequest.Kind.UNDO, change_id=SHOP[3], target_system=TargetSystem.objects.get(name="default"))
    [shown] = rendering.request_render(on_default)["migrations"]
    assert (shown["alias"], shown["vendor"]) == ("default", connections["default"].vendor)
    assert "`" not in shown["sql"] and '"djm_shop_item"' in shown["sql"]
