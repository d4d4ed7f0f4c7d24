"""Drift of governed Django migrations (issue 21, part 4; docs/django-migrations.md, "Drift"): after
adoption, a migration applied by plain ``migrate`` is found, an edited applied migration is found, a
governed migration unapplied behind the product's back is found; each clears when it stops."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from audit_app.models import AuditEntry
from changes_app.drift import checks as drift
from changes_app.models import Finding
from changes_app.pipeline.django_migrations import governed_migrations
from tests.support.trails import cli

pytestmark = pytest.mark.django_db(transaction=True)

SHOP = "django:djgov_shop."


def _open() -> set[tuple[str, str]]:
    return {(f.kind, f.change_id) for f in drift.findings_open() if f.change_id.startswith(SHOP)}


@pytest.fixture
def adopted(shop):
    call_command("migrate", "djgov_shop", "0002", verbosity=0)
    assert cli("adopt", "django", "--reason", "taken over").code == 0
    return shop


def test_an_adopted_database_in_step_has_no_django_drift(adopted):
    drift.drift_check(kind="definition")
    assert _open() == set()


def test_a_database_not_yet_adopted_is_left_to_the_not_adopted_block(shop):
    call_command("migrate", "djgov_shop", "0002", verbosity=0)
    drift.drift_check(kind="definition")
    assert _open() == set()


def test_a_migration_applied_by_plain_migrate_after_adoption_is_found(adopted):
    call_command("migrate", "djgov_shop", "0003", verbosity=0)
    report = drift.drift_check(kind="definition")
    assert _open() == {(Finding.Kind.APPLIED_OUTSIDE_GOVERNANCE, f"{SHOP}0003_product_sku")}
    finding = Finding.objects.get(kind=Finding.Kind.APPLIED_OUTSIDE_GOVERNANCE)
    assert finding.check_name == Finding.Check.DEFINITION and finding.target == "default"
    assert finding.last_evidence["alias"] == "default" and finding.last_evidence["ledger_state"] == ""
    assert [f.pk for f in report.opened] == [finding.pk]
    assert AuditEntry.objects.filter(event="drift.detected", details__finding=finding.pk).count() == 1

    # Seen again: the same finding, no second detection.
    drift.drift_check(kind="definition")
    finding.refresh_from_db()
    assert finding.times_seen == 2
    assert AuditEntry.objects.filter(event="drift.detected", details__finding=finding.pk).count() == 1

    # Unapplied again by hand: the condition is gone and the finding resolves itself.
    call_command("migrate", "djgov_shop", "0002", verbosity=0)
    drift.drift_check(kind="definition")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED


def test_an_edited_applied_migration_is_found(adopted):
    path = adopted / "migrations" / "0001_initial.py"
    path.write_text(path.read_text().replace("max_length=100", "max_length=120"))
    drift.drift_check(kind="definition")
    assert (Finding.Kind.CHECKSUM_MISMATCH, f"{SHOP}0001_initial") in _open()
    finding = Finding.objects.get(kind=Finding.Kind.CHECKSUM_MISMATCH, change_id=f"{SHOP}0001_initial")
    code = next(m for m in governed_migrations("default") if m.name == "0001_initial")
    assert finding.last_evidence["code_checksum"] == code.checksum
    assert finding.last_evidence["recorded_checksum"] != code.checksum
    # A whitespace-only edit is no edit (the checksum's normalisation).
    path.write_text(path.read_text().replace("max_length=120", "max_length=100") + "\n\n")
    drift.drift_check(kind="definition")
    assert (Finding.Kind.CHECKSUM_MISMATCH, f"{SHOP}0001_initial") not in _open()


def test_a_governed_migration_unapplied_behind_the_products_back_is_found(adopted):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    drift.drift_check(kind="definition")
    assert _open() == {(Finding.Kind.UNAPPLIED_OUTSIDE_GOVERNANCE, f"{SHOP}0002_seed")}
    finding = Finding.objects.get(kind=Finding.Kind.UNAPPLIED_OUTSIDE_GOVERNANCE)
    assert finding.last_evidence["ledger_state"] == "MANUAL_MARKED_AS_APPLIED"
    # validate, the deploy gate, counts an open drift finding (exit 6).
    assert cli("validate").code == 6
