"""Drift per member, in batches (docs/fleet.md, "Drift per member"): each beat tick checks the next
batch of members (the least recently checked first), a member whose object was changed outside
governance gets its own finding (one per member, change and kind, deduplicated), one notification per
group and batch, and the finding resolves itself once the member is put right."""

from __future__ import annotations

import psycopg
import pytest
from django.core import mail

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app.drift.checks import drift_check, member_drift_record
from changes_app.errors import ActionRefused
from changes_app.fleets import services as fleets
from changes_app.fleets.drift import members_drift_observe
from changes_app.models import Finding, FleetMember
from changes_app.services.schedules import DEFAULT_SCHEDULES, GUARDED_TASKS
from changes_app.tasks import fleet_drift_check_task
from tests.support.governance import snapshot

pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR = Actor(name="tests", via="tests")


def verified_change(sql: str = "CREATE TABLE a (id integer)") -> str:
    return f"""from changes_app.definitions import Change


class Table(Change):
    id = "fleet-table"
    author = "tests"
    target = "tenants"

    def apply(self, cursor):
        cursor.execute({sql!r})

    def verify(self, cursor):
        cursor.execute("SELECT to_regclass('a')")
        return cursor.fetchone()[0] is not None
"""


@pytest.fixture
def fleet_applied(group_targets, tenant_schemas, make_pipeline, monkeypatch, settings):
    """Three schemas with the change applied on each by a fleet run (its members run here)."""
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.FLAMINGOCK_WEBHOOK_URLS = []
    names = tenant_schemas(3)
    group_targets({"schemas": names})
    make_pipeline({"main": {"0001_table.py": verified_change()}})
    queued: list[int] = []
    monkeypatch.setattr(fleets, "members_dispatch", lambda ids: queued.extend(ids))
    fleet = fleets.fleet_run_start(actor=OPERATOR, target="tenants", source="CLI", canary=1, wave_size=5, concurrency=5)
    while queued:
        fleets.fleet_member_execute(member_run_id=queued.pop(0))
    fleet.refresh_from_db()
    assert fleet.result == "SUCCEEDED"
    mail.outbox.clear()
    return {"names": names, "make_pipeline": make_pipeline}


def outside_governance(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql)


def member_findings() -> list[tuple[str, str, str]]:
    return sorted(Finding.objects.exclude(member="").values_list("member", "kind", "status"))


def check(batch: int):
    return member_drift_record(observed=members_drift_observe(batch=batch))


def test_a_member_changed_outside_governance_gets_its_own_finding_and_one_mail_for_the_group(fleet_applied, external_pg):
    outside_governance(external_pg, 'DROP TABLE "t_01".a')

    first = check(batch=2)  # t_00, t_01

    assert member_findings() == [("t_01", "VERIFY_FAILED", "OPEN")]
    finding = Finding.objects.get(member="t_01")
    assert (finding.target, finding.change_id, finding.check_name) == ("tenants", "fleet-table", "LIVE")
    assert len(first.opened) == 1 and len(mail.outbox) == 1
    assert "1 member(s) of tenants" in mail.outbox[0].subject and "t_01" in mail.outbox[0].body
    detected = AuditEntry.objects.get(event="drift.detected")
    assert (detected.member, detected.details["finding"]) == ("t_01", finding.pk)
    assert audit_verify().ok


def test_batches_carry_a_cursor_between_ticks_and_a_finding_seen_again_is_not_repeated(fleet_applied, external_pg):
    outside_governance(external_pg, 'DROP TABLE "t_01".a')

    checked = [members_drift_observe(batch=2)["checked"], members_drift_observe(batch=2)["checked"]]

    assert [[row["member"] for row in batch] for batch in checked] == [["t_00", "t_01"], ["t_02", "t_00"]]
    assert not FleetMember.objects.filter(drift_checked_at=None).exists()
    check(batch=3)
    check(batch=3)

    finding = Finding.objects.get(member="t_01")
    assert finding.times_seen == 2 and finding.status == "OPEN"
    assert Finding.objects.exclude(member="").count() == 1
    assert AuditEntry.objects.filter(event="drift.detected").count() == 1 and len(mail.outbox) == 1


def test_the_finding_resolves_itself_once_the_member_is_put_right_and_the_global_check_leaves_it_alone(fleet_applied, external_pg):
    outside_governance(external_pg, 'DROP TABLE "t_01".a')
    check(batch=3)

    drift_check(kind="all")  # the single-target checks do not judge members' findings
    assert member_findings() == [("t_01", "VERIFY_FAILED", "OPEN")]

    outside_governance(external_pg, 'CREATE TABLE "t_01".a (id integer)')
    report = check(batch=3)

    assert member_findings() == [("t_01", "VERIFY_FAILED", "AUTO_RESOLVED")]
    assert len(report.resolved) == 1
    resolved = AuditEntry.objects.get(event="drift.resolved")
    assert resolved.member == "t_01"


def test_an_edited_change_is_a_checksum_finding_per_member_with_one_mail_for_the_batch(fleet_applied):
    fleet_applied["make_pipeline"]({"main": {"0001_table.py": verified_change("CREATE TABLE a (id bigint)")}})

    check(batch=10)

    assert member_findings() == [(name, "CHECKSUM_MISMATCH", "OPEN") for name in fleet_applied["names"]]
    assert len(mail.outbox) == 1 and "3 member(s) of tenants: 3 finding(s)" in mail.outbox[0].subject


def test_the_beat_task_checks_one_batch_and_is_scheduled_and_guarded(fleet_applied, external_pg, settings):
    settings.FLAMINGOCK_FLEET_DRIFT_BATCH = 1
    outside_governance(external_pg, 'DROP TABLE "t_00".a')

    result = fleet_drift_check_task.run()

    assert result == {"checks": ["MEMBERS"], "seen": 1, "opened": 1, "resolved": 0}
    assert FleetMember.objects.exclude(drift_checked_at=None).count() == 1
    assert DEFAULT_SCHEDULES["flamingock: fleet member drift"] == ("flamingock.fleet_drift_check", 300)
    assert "flamingock.fleet_drift_check" in GUARDED_TASKS


def test_a_condition_of_a_kind_the_member_check_does_not_own_is_refused_and_nothing_is_written(fleet_applied):
    before = snapshot()
    bogus = {"kind": "DEAD_RUN", "summary": "x", "evidence": {}, "change_id": "", "target": "tenants", "stage": "", "member": "t_00"}

    with pytest.raises(ActionRefused, match="does not record"):
        member_drift_record(observed={"conditions": [bogus], "checked": [], "undecided": []})

    assert snapshot() == before and not Finding.objects.exists()
