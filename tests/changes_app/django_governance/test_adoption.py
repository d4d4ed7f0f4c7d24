"""Adoption of a database migrated by plain ``migrate`` (issue 21, part 3; docs/django-migrations.md,
"Adoption"): every recorder row becomes ``change.adopted`` with state MANUAL_MARKED_AS_APPLIED, once."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from audit_app.models import AuditEntry, ChangeState
from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.models import ApprovalPolicy, ChangeRequest, DjangoAdoption, Run, TargetSystem
from changes_app.pipeline.django_migrations import adoption_required, migration_checksum
from changes_app.pipeline.plan import Action
from tests.support.trails import cli, local_operator

pytestmark = pytest.mark.django_db(transaction=True)

SHOP_0001, SHOP_0002, SHOP_0003 = "django:djgov_shop.0001_initial", "django:djgov_shop.0002_seed", "django:djgov_shop.0003_product_sku"


def _checksum(shop, name: str) -> str:
    return migration_checksum((shop / "migrations" / f"{name}.py").read_text())


def test_a_database_migrated_by_plain_migrate_is_adopted_once(shop):
    call_command("migrate", "djgov_shop", "0002", verbosity=0)
    assert adoption_required("default")
    blocked = services.pipeline_plan().item(SHOP_0003)
    assert blocked.action == Action.BLOCKED and blocked.reason.startswith("not_adopted")

    status = cli("adopt", "django", "--status", "--json")
    assert status.code == 0, status.err
    shown = json.loads(status.out)
    assert shown["adoption_required"] is True and shown["adopted"] is False
    assert [row["change_id"] for row in shown["migrations"]] == [SHOP_0001, SHOP_0002]

    done = cli("adopt", "django", "--database", "default", "--reason", "taken over from plain migrate", "--json")
    assert done.code == 0, done.out + done.err
    assert json.loads(done.out)["kind"] == Run.Kind.ADOPT

    entries = list(AuditEntry.objects.filter(event="change.adopted").order_by("seq"))
    assert [(e.change_id, e.state, e.checksum) for e in entries] == [
        (SHOP_0001, S.MANUAL_MARKED_AS_APPLIED, _checksum(shop, "0001_initial")),
        (SHOP_0002, S.MANUAL_MARKED_AS_APPLIED, _checksum(shop, "0002_seed")),
    ]
    assert {e.reason for e in entries} == {"taken over from plain migrate"}
    assert {e.actor for e in entries} == {local_operator().name}
    assert {e.stage for e in entries} == {"django:default"}
    assert ChangeState.objects.get(change_id=SHOP_0002).state == S.MANUAL_MARKED_AS_APPLIED

    adoption = DjangoAdoption.objects.get(alias="default")
    assert adoption.adopted_by_name == local_operator().name and adoption.reason == "taken over from plain migrate"
    assert adoption.migrations == [
        {"change_id": SHOP_0001, "checksum": _checksum(shop, "0001_initial")},
        {"change_id": SHOP_0002, "checksum": _checksum(shop, "0002_seed")},
    ]
    assert not adoption_required("default")
    plan = services.pipeline_plan()
    assert plan.item(SHOP_0003).action == Action.APPLY
    assert plan.item(SHOP_0002).latest_state == S.MANUAL_MARKED_AS_APPLIED
    entry = entries[0]
    assert (entry.stage, entry.order, entry.target) == (plan.item(SHOP_0001).change.stage, plan.item(SHOP_0001).change.order, "default")

    # A second adoption is refused and writes nothing.
    before = AuditEntry.objects.filter(event="change.adopted").count()
    again = cli("adopt", "django", "--reason", "again")
    assert again.code == 2 and "already adopted" in again.err
    assert AuditEntry.objects.filter(event="change.adopted").count() == before
    assert DjangoAdoption.objects.count() == 1


def test_a_database_without_recorder_rows_needs_no_adoption(shop):
    assert not adoption_required("default")
    refused = cli("adopt", "django", "--reason", "nothing there")
    assert refused.code == 2 and "needs no adoption" in refused.err
    assert not DjangoAdoption.objects.exists()
    assert not AuditEntry.objects.filter(event="change.adopted").exists()


def test_adoption_needs_a_reason_and_a_governed_alias(shop, settings):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    no_reason = cli("adopt", "django", "--reason", "  ")
    assert no_reason.code == 2
    unknown = cli("adopt", "django", "--database", "nope", "--reason", "x")
    assert unknown.code == 2 and "no governed Django migrations" in unknown.err
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = []
    off = cli("adopt", "django", "--reason", "x")
    assert off.code == 2 and "no governed Django migrations" in off.err
    assert not DjangoAdoption.objects.exists()
    assert not AuditEntry.objects.filter(event="change.adopted").exists()


def test_adoption_where_a_policy_governs_is_a_request_not_done_unapproved(shop):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    services.target_systems_sync()
    ApprovalPolicy.objects.create(target_system=TargetSystem.objects.get(name="default"), environment="dev", required_approvals=1)
    requested = cli("adopt", "django", "--reason", "x")
    assert requested.code == 4 and "awaits 1 approval(s) on default" in requested.out, requested.out + requested.err
    request = ChangeRequest.objects.get()
    assert (request.kind, request.change_id, request.status) == (ChangeRequest.Kind.ADOPT, "django:default", ChangeRequest.Status.PENDING)
    assert not DjangoAdoption.objects.exists()
    assert adoption_required("default")
