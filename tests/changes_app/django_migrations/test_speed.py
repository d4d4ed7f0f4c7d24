"""What makes governed Django migrations cheap (docs/decisions.md, "Governed Django migrations: speed")
keeps their meaning: ancestors worked out when asked, each file read once, the graph as on disk reused
only while no squashed migration makes the recorder matter, and forgotten when the settings change."""

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from changes_app.pipeline import django_migrations as dm
from changes_app.pipeline.checksums import checksum_text
from changes_app.pipeline.discovery import pipeline_load

pytestmark = pytest.mark.django_db(transaction=True)

MIGRATION = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = {dependencies}
    replaces = {replaces}
    operations = []
"""


def test_ancestors_are_every_governed_migration_depended_on_transitively(django_apps):
    stage = pipeline_load(reload=True).stages[0]
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    by_id = {change.id: change for change in stage.changes}
    for change in stage.changes:
        expected = {dm.change_id(*key) for key in graph.forwards_plan(change.migration.key)[:-1]} & set(by_id)
        assert set(change.ancestors) == expected
        assert len(change.ancestors) == len(expected)
        assert change.ancestors == frozenset(expected)
    notes = by_id["django:djm_notes.0002_backfill"].ancestors
    assert "django:djm_shop.0001_initial" in notes and "django:djm_notes.0001_initial" in notes
    assert "django:djm_shop.0002_item_price" not in notes
    assert "django:djm_notes.0002_backfill" not in notes  # never its own ancestor


def test_each_change_carries_its_files_text_and_checksum(django_apps):
    stage = pipeline_load(reload=True).stages[0]
    for change in stage.changes:
        with open(change.migration.path, encoding="utf-8") as file:
            text = file.read()
        assert change.source == text
        assert change.checksum == change.migration.checksum == checksum_text(text)
        assert change.path.startswith("tests/fixtures/django_apps/") and change.path.endswith(f"{change.migration.name}.py")


def test_a_squashed_migration_makes_the_stage_read_the_recorder_and_a_settings_change_forgets_the_graph(
    django_apps, settings, tmp_path, monkeypatch, unique
):
    # The fixture's pipeline built the graph as on disk: remapping djm_notes's migrations must forget it.
    assert "django:djm_notes.0002_backfill" in pipeline_load().by_id
    package = f"djspeed_squash_{unique.replace('-', '_')}"
    folder = tmp_path / package / "migrations"
    folder.mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (folder / "__init__.py").write_text("")
    (folder / "0001_a.py").write_text(MIGRATION.format(dependencies='[("djm_shop", "0001_initial")]', replaces="[]"))
    (folder / "0002_b.py").write_text(MIGRATION.format(dependencies='[("djm_notes", "0001_a")]', replaces="[]"))
    (folder / "0001_squashed_0002_b.py").write_text(
        MIGRATION.format(dependencies='[("djm_shop", "0001_initial")]', replaces='[("djm_notes", "0001_a"), ("djm_notes", "0002_b")]')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings.MIGRATION_MODULES = {"djm_notes": f"{package}.migrations"}

    def names() -> list[str]:
        return [migration.name for migration in dm.governed_migrations("default") if migration.app_label == "djm_notes"]

    assert names() == ["0001_squashed_0002_b"]  # nothing recorded: the squashed one stands for both
    recorder = MigrationRecorder(connection)
    recorder.ensure_schema()
    recorder.record_applied("djm_notes", "0001_a")
    try:
        assert names() == ["0001_a", "0002_b"]  # half applied: Django, and the stage, keep the replaced ones
        changes = [change.id for change in dm.stage_changes("default")]
        assert "django:djm_notes.0002_b" in changes and "django:djm_notes.0001_squashed_0002_b" not in changes
        # The run's target reads the recorder too: its graph keeps the replaced ones, not the squashed one.
        nodes = dm.targets()["default"].executor().loader.graph.nodes
        assert ("djm_notes", "0002_b") in nodes and ("djm_notes", "0001_squashed_0002_b") not in nodes
    finally:
        recorder.record_unapplied("djm_notes", "0001_a")
    assert names() == ["0001_squashed_0002_b"]


def test_without_squashed_migrations_the_targets_share_one_graph_read_only(django_apps):
    first, second = dm.targets()["default"], dm.targets()["default"]
    assert first.executor().loader is second.executor().loader  # built once per process, not per run
    graph = first.executor().loader.graph
    assert {key for key in graph.nodes if key[0].startswith("djm_")} == {
        dm.parse_change_id(change.id) for change in pipeline_load().stages[0].changes
    }


def test_an_atomic_migration_runs_in_the_session_transaction_without_a_savepoint_of_its_own(django_apps, monkeypatch):
    from changes_app.targets import django_migrations as target_module
    from tests.support.trails import results, run_pipeline

    statements: dict[str, list[str]] = {}
    apply = target_module.DjangoMigrationTarget.apply

    def watched(self, change_id):
        seen = statements.setdefault(change_id, [])
        seen.append(f"-- in a transaction: {connection.in_atomic_block}")

        def wrapper(execute, sql, params, many, context):
            seen.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(wrapper):
            apply(self, change_id)

    monkeypatch.setattr(target_module.DjangoMigrationTarget, "apply", watched)
    atomic = [change.id for change in pipeline_load().stages[0].changes if change.migration.atomic]

    run = run_pipeline()

    assert set(results(run).values()) == {"APPLIED"}, run.status_reason
    for change_id in atomic:
        sent = statements[change_id]
        assert sent[0] == "-- in a transaction: True"  # the session's transaction holds the migration
        assert not [sql for sql in sent if sql.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))], (change_id, sent)
        assert any("django_migrations" in sql and sql.lstrip().upper().startswith("INSERT") for sql in sent), (change_id, sent)
    # Django's own migration objects are left as they are: only the copy handed over is non-atomic.
    graph = dm.targets()["default"].executor().loader.graph
    assert all(graph.nodes[dm.parse_change_id(change_id)].atomic for change_id in atomic)
