"""Governed Django migrations (docs/django-migrations.md): discovery, plan, execution."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.recorder import MigrationRecorder

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.models import ChangeRecord, Run, TargetSystem
from changes_app.pipeline import django_migrations as dm
from changes_app.pipeline.discovery import pipeline_load
from changes_app.targets import django_migrations as target_module
from tests.support.trails import ledger, local_operator, results, run_pipeline, table_exists

pytestmark = pytest.mark.django_db(transaction=True)

SHOP = [f"django:djm_shop.{name}" for name in ("0001_initial", "0002_item_price", "0003_item_sku", "0004_item_stock")]
NOTES = [f"django:djm_notes.{name}" for name in ("0001_initial", "0002_backfill", "0003_nonatomic")]


def recorder_rows() -> set[tuple[str, str]]:
    return {(app, name) for app, name in MigrationRecorder(connection).applied_migrations() if app.startswith("djm_")}


def test_change_ids_parse_and_refuse_others():
    assert dm.change_id("shop", "0001_initial") == "django:shop.0001_initial"
    assert dm.parse_change_id("django:shop.0001_initial") == ("shop", "0001_initial")
    for bad in ("shop.0001", "django:", "django:shop", "django:.0001"):
        with pytest.raises(ValueError):
            dm.parse_change_id(bad)


def test_nothing_is_governed_by_default(django_apps, settings):
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = []
    assert dm.governed_app_labels() == set()
    assert dm.governed_aliases() == []


def test_product_apps_and_their_dependencies_are_never_governed(django_apps, settings):
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = "__all__"
    never = dm.never_governed_app_labels()
    assert {"changes_app", "audit_app", "auth", "contenttypes"} <= never
    assert dm.governed_app_labels() & never == set()
    assert {"djm_shop", "djm_notes"} <= dm.governed_app_labels()


def test_plan_lists_migrations_in_graph_order_in_a_stage_before_the_others(django_apps):
    pipeline = django_apps
    assert pipeline.valid, pipeline.problems
    stage = pipeline.stages[0]
    assert stage.name == "django:default"
    ids = [change.id for change in stage.changes]
    assert set(ids) == {*SHOP, *NOTES}
    assert ids.index(SHOP[0]) < ids.index(NOTES[0]) < ids.index(NOTES[1]) < ids.index(NOTES[2])
    assert ids.index(SHOP[0]) < ids.index(SHOP[1]) < ids.index(SHOP[2]) < ids.index(SHOP[3])
    assert {change.target for change in stage.changes} == {"default"}
    plan = services.pipeline_plan()
    strategies = {item.change.id: item.strategy.value for item in plan.items}
    atomic = "MARKER" if connection.vendor == "mysql" else "SHARED_TRANSACTION"
    assert strategies[SHOP[0]] == atomic
    assert strategies[NOTES[2]] == "NON_TRANSACTIONAL"
    assert {item.action.value for item in plan.items} == {"APPLY"}


def test_checksum_is_the_normalised_source(django_apps):
    change = django_apps.by_id[SHOP[1]]
    with open(change.migration.path, encoding="utf-8") as file:
        source = file.read()
    assert change.checksum == dm.migration_checksum(source) == dm.migration_checksum(source.replace("\n", "   \r\n"))


def test_run_applies_every_migration_once_with_its_recorder_row_and_entry(django_apps):
    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert results(run) == {change_id: "APPLIED" for change_id in (*SHOP, *NOTES)}
    assert recorder_rows() == {dm.parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}
    assert table_exists("djm_shop_item") and table_exists("djm_notes_note") and table_exists("djm_notes_extra")
    assert ledger(SHOP[0]) == [(SHOP[0], "APPLIED")]
    assert ledger(NOTES[2]) == [(NOTES[2], "STARTED"), (NOTES[2], "APPLIED")]
    assert AuditEntry.objects.get(change_id=SHOP[0], state="APPLIED").transaction_strategy == "SHARED_TRANSACTION"
    # Applied once: the next run does nothing.
    assert run_pipeline().status == Run.Status.NO_CHANGES
    assert len(recorder_rows()) == len(SHOP) + len(NOTES)


def test_a_failing_atomic_migration_leaves_neither_its_effect_nor_its_recorder_row(django_apps):
    with connection.cursor() as cursor:  # 0002 will fail: its column exists already... on a table made here
        cursor.execute("CREATE TABLE djm_shop_item (id integer PRIMARY KEY, name varchar(50), price integer)")
    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert results(run)[SHOP[0]] == "FAILED"
    assert ledger(SHOP[0]) == [(SHOP[0], "FAILED")]
    assert recorder_rows() == set()


def test_recorder_rows_without_adoption_block_the_stage_as_not_adopted(django_apps):
    MigrationRecorder(connection).record_applied("djm_shop", "0001_initial")
    assert dm.recorded_migrations() == {SHOP[0]}
    assert dm.adoption_required()

    plan = services.pipeline_plan()

    assert {item.action.value for item in plan.items} == {"BLOCKED"}
    assert all(item.reason.startswith("not_adopted") for item in plan.items)
    verdict = services.pipeline_validate(findings=list)
    assert verdict.exit_code == 3 and SHOP[0] in verdict.blocked
    run = run_pipeline()
    assert recorder_rows() == {("djm_shop", "0001_initial")}
    assert run.status != Run.Status.SUCCEEDED


def test_the_governed_alias_is_mirrored_as_a_target_system_and_each_migration_as_a_change_record(django_apps):
    run_pipeline()

    system = TargetSystem.objects.get(name="default")
    assert system.kind == "django_migrations" and system.retired_at is None
    record = ChangeRecord.objects.get(change_id=SHOP[0])
    assert (record.stage, record.target, record.kind, record.has_rollback) == ("django:default", "default", "django", True)
    assert ChangeRecord.objects.get(change_id=NOTES[1]).has_rollback is False


def test_on_another_alias_the_recorder_row_is_the_marker(django_apps, monkeypatch):
    # The audit trail elsewhere: this alias's atomic migrations take the marker strategy.
    monkeypatch.setattr(target_module, "audit_alias", lambda: "elsewhere")
    assert services.pipeline_plan().item(SHOP[0]).strategy.value == "MARKER"

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(SHOP[0]) == [(SHOP[0], "STARTED"), (SHOP[0], "APPLIED")]
    assert recorder_rows() == {dm.parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}
    target = target_module.DjangoMigrationTarget("default", {"alias": "default"})
    assert target.marker_lookup(change_id=SHOP[0], generation=0) is not None
    with pytest.raises(target_module.MarkerConflict):
        target.marker_insert({}, change_id=SHOP[0], generation=0, run_id="x", token=1)
    MigrationRecorder(connection).record_unapplied("djm_shop", "0004_item_stock")
    assert target.marker_lookup(change_id=SHOP[3], generation=0) is None


def test_an_unknown_app_in_the_setting_is_a_validation_problem(django_apps, settings):
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = ["djm_shop", "no_such_app"]
    pipeline = pipeline_load(reload=True)
    assert [problem.code for problem in pipeline.problems] == ["django-app"]
    assert "no_such_app" in pipeline.problems[0].message


def test_one_project_state_is_carried_through_a_run(django_apps, monkeypatch):
    rebuilt = []
    for owner, name in ((Migration, "mutate_state"), (MigrationLoader, "project_state")):
        original = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda self, *args, _original=original, _name=name, **kwargs: rebuilt.append(_name) or _original(self, *args, **kwargs)
        )

    assert run_pipeline().status == Run.Status.SUCCEEDED

    # Each migration starts from the state the previous one returned: none is rebuilt from the graph.
    assert rebuilt == []
    assert recorder_rows() == {dm.parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}


def test_after_adoption_the_run_applies_the_rest_and_only_the_rest(django_apps):
    # djm_shop.0001 was applied by a plain migrate before governance.
    call_command("migrate", "djm_shop", "0001_initial", verbosity=0)
    assert dm.adoption_required()
    assert run_pipeline().status != Run.Status.SUCCEEDED
    assert recorder_rows() == {("djm_shop", "0001_initial")}

    services.django_adopt(alias="default", actor=local_operator(), reason="existing database", source=Run.Source.CLI)
    assert not dm.adoption_required()
    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert SHOP[0] not in {change_id for change_id, result in results(run).items() if result == "APPLIED"}
    assert {change_id for change_id, result in results(run).items() if result == "APPLIED"} == {*SHOP[1:], *NOTES}
    assert recorder_rows() == {dm.parse_change_id(change_id) for change_id in (*SHOP, *NOTES)}
