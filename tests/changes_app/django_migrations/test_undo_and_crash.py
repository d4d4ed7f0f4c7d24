"""Undo of governed migrations cascades over the graph; a killed non-atomic migration needs a human."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.errors import ActionRefused
from changes_app.locks.backends import lock_backend
from changes_app.models import Run
from tests.conftest import REPO
from tests.support.trails import ledger, local_operator, results, run_pipeline, table_exists

pytestmark = pytest.mark.django_db(transaction=True)

SHOP = [f"django:djm_shop.{name}" for name in ("0001_initial", "0002_item_price", "0003_item_sku", "0004_item_stock")]
NOTES = [f"django:djm_notes.{name}" for name in ("0001_initial", "0002_backfill", "0003_nonatomic")]


def recorded() -> set[str]:
    return {f"django:{app}.{name}" for app, name in MigrationRecorder(connection).applied_migrations() if app.startswith("djm_")}


def columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        return {column.name for column in connection.introspection.get_table_description(cursor, table)}


def test_undo_cascades_over_applied_dependants_newest_first_and_holds_them(django_apps):
    assert run_pipeline().status == Run.Status.SUCCEEDED

    run = services.change_undo(change_id=SHOP[1], actor=local_operator(), reason="price was wrong", source=Run.Source.CLI)

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert list(results(run)) == [SHOP[3], SHOP[2], SHOP[1]]
    assert set(results(run).values()) == {"ROLLED_BACK"}
    assert recorded() == {SHOP[0], *NOTES}
    assert columns("djm_shop_item") == {"id", "name"}
    for change_id in SHOP[1:]:
        assert ledger(change_id)[-2:] == [(change_id, "ROLLED_BACK"), (change_id, "SKIPPED")]
    # Held: the next run does not apply them again.
    assert run_pipeline().status == Run.Status.NO_CHANGES
    assert recorded() == {SHOP[0], *NOTES}


def test_undo_through_an_irreversible_operation_is_refused_and_changes_nothing(django_apps):
    assert run_pipeline().status == Run.Status.SUCCEEDED
    entries_before = AuditEntry.objects.count()

    with pytest.raises(ActionRefused, match=r"django:djm_notes.0002_backfill has an irreversible operation"):
        services.change_undo(change_id=SHOP[0], actor=local_operator(), reason="start over", source=Run.Source.CLI)

    assert recorded() == {*SHOP, *NOTES}
    assert table_exists("djm_shop_item") and table_exists("djm_notes_note")
    assert not Run.objects.filter(kind=Run.Kind.UNDO).exists()
    assert AuditEntry.objects.filter(change_id__startswith="django:").exclude(state="APPLIED").exclude(state="STARTED").count() == 0
    assert AuditEntry.objects.count() - entries_before <= 1  # at most the refusal's own record


def test_kill_9_inside_a_non_atomic_migration_needs_a_human_and_fix_lets_the_run_complete(django_apps, subprocess_env, tmp_path):
    flag = tmp_path / "inside"
    env = subprocess_env(FLAMINGOCK_TEST_DJM_PAUSE=str(flag))
    child = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "flamingock", "run"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    while not flag.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached the non-atomic migration"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert lock_backend().force_release() is not None

    assert ledger(NOTES[2]) == [(NOTES[2], "STARTED")]
    assert table_exists("djm_notes_extra")  # its first operation committed: a partial effect
    item = services.pipeline_plan().item(NOTES[2])
    assert item.action.value == "MANUAL_INTERVENTION"
    assert "sqlmigrate djm_notes 0003_nonatomic" in item.reason and f"flamingock fix {NOTES[2]}" in item.reason
    blocked = run_pipeline()
    assert blocked.status != Run.Status.SUCCEEDED, blocked.results
    assert results(blocked)[NOTES[2]] in ("BLOCKED", "NOT_REACHED"), blocked.results
    assert NOTES[2] not in recorded()

    fixed = services.change_fix(
        change_id=NOTES[2], resolution="rolled-back", actor=local_operator(), reason="dropped djm_notes_extra by hand", source=Run.Source.CLI
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE djm_notes_extra")
    assert fixed.status == Run.Status.SUCCEEDED, (fixed.status_reason, ledger(NOTES[2]))
    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, (run.status_reason, run.results, ledger(NOTES[2]))
    assert results(run)[NOTES[2]] == "APPLIED"
    assert recorded() == {*SHOP, *NOTES}
