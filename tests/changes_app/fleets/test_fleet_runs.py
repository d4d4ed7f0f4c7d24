"""Fleet runs on a group of PostgreSQL schemas (docs/semantics.md, "Fleets"): members discovered and
audited, a ledger and a lock per member, waves after a canary, halts by policy, retry, cancel and
resume. The members' tasks run here in this process, one after another, in the order Celery would get
them (the service's own logic); tests/changes_app/fleets/test_fleet_workers.py runs them on real workers."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry, ChangeState, MemberChangeState
from audit_app.services import Actor, FenceRefused, audit_record
from changes_app import services
from changes_app.errors import ActionRefused
from changes_app.fleets import services as fleets
from changes_app.fleets.groups import GroupUnknown
from changes_app.fleets.locks import MemberLeaseLock, member_lock_name
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.locks.base import fence_sequence
from changes_app.models import Fence, FleetMember, FleetMemberRun, FleetRun
from changes_app.services.schedules import DEFAULT_SCHEDULES
from changes_app.tasks import fleet_members_discover_task
from tests.changes_app.fleets.conftest import group_change, schema_columns, schema_tables
from tests.support.governance import person, policy
from tests.support.trails import run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR = Actor(name="tests", via="tests")


def start(**policy) -> FleetRun:
    return fleets.fleet_run_start(actor=OPERATOR, target="tenants", source="CLI", **policy)


def events(*names: str) -> list[str]:
    return list(AuditEntry.objects.filter(event__in=names).order_by("seq").values_list("event", flat=True))


def applied(member: str, change_id: str) -> int:
    return AuditEntry.objects.filter(member=member, change_id=change_id, event="change.applied").count()


# -- members ------------------------------------------------------------------------------------------


def test_members_are_discovered_and_each_addition_and_removal_is_audited_naming_the_member(group_targets, tenant_schemas):
    group_targets({"schemas": ["t_00", "t_01", "t_02"]})

    first = fleets.members_discover(target="tenants")
    group_targets({"schemas": ["t_00", "t_02", "t_03"]})
    second = fleets.members_discover(target="tenants")

    assert (first["added"], first["removed"]) == (["t_00", "t_01", "t_02"], [])
    assert (second["added"], second["removed"]) == (["t_03"], ["t_01"])
    assert fleets.group_members(target="tenants") == ["t_00", "t_02", "t_03"]
    rows = list(
        AuditEntry.objects.filter(event__in=["member.added", "member.removed"]).order_by("seq").values_list("event", "member", "hash_version")
    )
    assert rows == [
        ("member.added", "t_00", 2),
        ("member.added", "t_01", 2),
        ("member.added", "t_02", 2),
        ("member.added", "t_03", 2),
        ("member.removed", "t_01", 2),
    ]
    assert audit_verify().ok


def test_members_from_a_query_are_read_on_the_target_database(group_targets, tenant_schemas):
    tenant_schemas(3, prefix="q_")
    group_targets({"schemas_query": "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'q\\_%' ORDER BY 1"})

    found = fleets.members_discover(target="tenants")

    assert found["members"] == ["q_00", "q_01", "q_02"]


def test_a_group_with_bad_member_names_or_no_group_is_refused_and_nothing_is_written(group_targets):
    group_targets({"schemas": ["ok", "bad name; DROP"]})
    before = AuditEntry.objects.count()

    with pytest.raises(GroupUnknown, match="member names must match"):
        fleets.members_discover(target="tenants")
    with pytest.raises(GroupUnknown, match="member names must match"):
        start()
    with pytest.raises(GroupUnknown, match="is not a group of members"):
        fleets.fleet_run_start(actor=OPERATOR, target="ext-pg", source="CLI")

    assert AuditEntry.objects.count() == before
    assert not FleetMember.objects.exists() and not FleetRun.objects.exists()


def test_a_bad_policy_is_refused_and_nothing_is_written(group_targets, tenant_schemas):
    group_targets({"schemas": tenant_schemas(2)})

    with pytest.raises(ActionRefused, match="concurrency"):
        start(concurrency=0)

    assert not FleetRun.objects.exists()
    assert not AuditEntry.objects.filter(event="member.added").exists()


# -- a fleet run ----------------------------------------------------------------------------------------


def test_fleet_run_applies_each_change_once_on_every_member_in_its_own_schema(group_targets, tenant_schemas, make_pipeline, external_pg, inline):
    names = tenant_schemas(6)
    group_targets({"schemas": names})
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change("fleet-create", "CREATE TABLE accounts (id integer)"),
                "0002_alter.py": group_change("fleet-alter", "ALTER TABLE accounts ADD COLUMN plan text"),
            }
        }
    )

    fleet = start(canary=2, wave_size=2, concurrency=2)
    inline()
    fleet.refresh_from_db()

    assert (fleet.status, fleet.result) == ("FINISHED", "SUCCEEDED")
    for name in names:
        assert {"accounts", "flamingock_marker"} <= schema_tables(external_pg, name)
        assert schema_columns(external_pg, name, "accounts") == {"id", "plan"}
        assert (applied(name, "fleet-create"), applied(name, "fleet-alter")) == (1, 1)
    states = {(row.member, row.change_id): row.state for row in MemberChangeState.objects.all()}
    assert states == {(name, change): "APPLIED" for name in names for change in ("fleet-create", "fleet-alter")}
    assert not ChangeState.objects.filter(change_id__startswith="fleet-").exists()
    # One chain; every entry of a member's child run names it.
    child_runs = set(FleetMemberRun.objects.values_list("run_id", flat=True))
    assert not AuditEntry.objects.filter(run_id__in=child_runs, member=None).exists()
    waves = [entry.details["wave"] for entry in AuditEntry.objects.filter(event="fleet.wave_started").order_by("seq")]
    assert waves == [0, 1, 2]
    assert events("fleet.started", "fleet.halted", "fleet.finished") == ["fleet.started", "fleet.finished"]
    assert audit_verify().ok


def test_concurrency_limit_caps_the_members_queued_at_once(group_targets, tenant_schemas, make_pipeline, inline):
    group_targets({"schemas": tenant_schemas(7)})
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})

    start(canary=1, wave_size=5, concurrency=3)
    assert len(inline.queued) == 1  # the canary alone
    inline(limit=1)
    assert len(inline.queued) == 3  # wave 1, three at a time
    inline()

    assert FleetRun.objects.get().result == "SUCCEEDED"


def test_a_canary_failure_halts_and_retry_after_the_fix_completes_each_change_exactly_once(
    group_targets, tenant_schemas, make_pipeline, external_pg, inline, tmp_path
):
    names = tenant_schemas(6)
    group_targets({"schemas": names})
    flag = tmp_path / "bug"
    flag.write_text("t_01")
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)"),
                "0002_alter.py": group_change("fleet-alter", "ALTER TABLE a ADD COLUMN b text", fail_on=str(flag)),
            }
        }
    )

    fleet = start(canary=2, wave_size=2, concurrency=2, max_failures=3)
    inline()
    fleet.refresh_from_db()

    assert (fleet.result, fleet.status_reason) == ("HALTED", "canary member(s) failed: t_01")
    statuses = dict(FleetMemberRun.objects.values_list("member", "status"))
    assert statuses == {
        "t_00": "SUCCEEDED",
        "t_01": "FAILED",
        "t_02": "NOT_STARTED",
        "t_03": "NOT_STARTED",
        "t_04": "NOT_STARTED",
        "t_05": "NOT_STARTED",
    }
    assert not schema_tables(external_pg, "t_02")
    assert events("fleet.halted") == ["fleet.halted"]

    flag.unlink()  # the fix
    retried = fleets.fleet_retry(fleet_run_id=fleet.pk, actor=OPERATOR)
    assert retried.status == "RUNNING"
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "SUCCEEDED"
    for name in names:
        assert (applied(name, "fleet-create"), applied(name, "fleet-alter")) == (1, 1)
        assert schema_columns(external_pg, name, "a") == {"id", "b"}
    assert events("fleet.finished") == ["fleet.finished", "fleet.finished"]
    assert audit_verify().ok


def test_failures_after_the_canary_halt_at_the_limit_and_fewer_end_partial(group_targets, tenant_schemas, make_pipeline, inline, tmp_path):
    group_targets({"schemas": tenant_schemas(6)})
    flag = tmp_path / "bug"
    flag.write_text("t_02 t_03")
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))}})

    halted = start(canary=1, wave_size=2, concurrency=2, max_failures=2)
    inline()
    halted.refresh_from_db()

    assert (halted.result, halted.status_reason) == ("HALTED", "2 member(s) failed (halt at 2)")
    # Waves: t_00 (canary), t_01 t_02, t_03 t_04, t_05. The second failure (t_03) halts: t_04, already
    # started beside it, finishes; t_05 never starts.
    statuses = dict(FleetMemberRun.objects.filter(fleet_run=halted).values_list("member", "status"))
    assert statuses == {"t_00": "SUCCEEDED", "t_01": "SUCCEEDED", "t_02": "FAILED", "t_03": "FAILED", "t_04": "SUCCEEDED", "t_05": "NOT_STARTED"}

    flag.write_text("t_04")
    create = group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))
    make_pipeline({"main": {"0001_create.py": create, "0002_more.py": group_change("fleet-more", "CREATE TABLE b (id integer)", fail_on=str(flag))}})
    partial = start(canary=1, wave_size=2, concurrency=2, max_failures=5)
    inline()
    partial.refresh_from_db()

    assert partial.result == "PARTIAL"
    assert dict(FleetMemberRun.objects.filter(fleet_run=partial).values_list("member", "status"))["t_04"] == "FAILED"


def test_cancel_starts_no_more_members_and_resume_starts_them(group_targets, tenant_schemas, make_pipeline, inline):
    group_targets({"schemas": tenant_schemas(4)})
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})

    fleet = start(canary=1, wave_size=3, concurrency=3)
    assert len(inline.queued) == 1  # the canary's task, not yet run
    fleets.fleet_cancel(fleet_run_id=fleet.pk, actor=OPERATOR)
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "CANCELLED"
    assert set(FleetMemberRun.objects.values_list("status", flat=True)) == {"NOT_STARTED"}
    assert not MemberChangeState.objects.exists()

    with pytest.raises(ActionRefused, match="already finished"):
        fleets.fleet_cancel(fleet_run_id=fleet.pk, actor=OPERATOR)
    fleets.fleet_resume(fleet_run_id=fleet.pk, actor=OPERATOR)
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "SUCCEEDED"


def test_the_reaper_finishes_a_fleet_whose_member_task_was_lost(group_targets, tenant_schemas, make_pipeline, inline, settings):
    group_targets({"schemas": tenant_schemas(2)})
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})
    settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT = 0

    fleet = start(canary=1, wave_size=1, concurrency=1)
    inline.queued.clear()  # the broker lost the canary's task
    reaped = fleets.fleets_reap()
    inline()
    fleets.fleets_reap()
    fleet.refresh_from_db()

    assert reaped["resent"]
    assert fleet.result == "SUCCEEDED"


# -- the member lock --------------------------------------------------------------------------------------


def test_member_tokens_come_from_the_fence_row_and_a_stale_one_is_refused(group_targets):
    name = member_lock_name(environment="tests", target="tenants", member="t_00")
    lock = MemberLeaseLock(name, lease_seconds=30)
    first = lock.try_acquire(run_id=uuid.uuid4(), actor=OPERATOR)
    assert lock.try_acquire(run_id=uuid.uuid4(), actor=OPERATOR) is None  # held
    lock.force_release()
    second = lock.try_acquire(run_id=uuid.uuid4(), actor=OPERATOR)

    assert (first.token, second.token) == (1, 3)  # the force release advanced the row once
    assert Fence.objects.get(name=name).token == 3
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [fence_sequence(name)])
            assert cursor.fetchone()[0] is None  # no sequence per member
    before = AuditEntry.objects.count()
    with pytest.raises(FenceRefused, match="stale"):
        audit_record(event="change.started", actor=OPERATOR, environment="tests", fence=first, member="t_00")
    assert AuditEntry.objects.count() == before
    audit_record(event="lock.checked", actor=OPERATOR, environment="tests", fence=second, member="t_00")
    assert AuditEntry.objects.count() == before + 1


# -- the single-target path ---------------------------------------------------------------------------------


def test_a_pipeline_run_leaves_a_groups_changes_to_fleet_runs_and_runs_the_rest_as_before(group_targets, tenant_schemas, make_pipeline, external_pg):
    group_targets({"schemas": tenant_schemas(2)})
    make_pipeline(
        {
            "main": {
                "0001_single.py": group_change("single-create", "CREATE TABLE single_t (id integer)", target="ext-pg"),
                "0002_group.py": group_change("fleet-create", "CREATE TABLE a (id integer)"),
            }
        }
    )

    run = run_pipeline()

    assert run.status == "SUCCEEDED"
    assert [result["change_id"] for result in run.results] == ["single-create"]
    assert ChangeState.objects.get(change_id="single-create").state == "APPLIED"
    assert not AuditEntry.objects.filter(change_id="fleet-create").exists()
    assert "a" not in schema_tables(external_pg, "public") and "a" not in schema_tables(external_pg, "t_00")
    assert AuditEntry.objects.filter(run_id=run.id).exclude(member=None).count() == 0


# -- the fleet plan ---------------------------------------------------------------------------------------


def test_fleet_plan_counts_next_actions_per_change_in_a_fixed_number_of_queries(group_targets, tenant_schemas, make_pipeline, inline, tmp_path):
    names = tenant_schemas(6)
    group_targets({"schemas": names})
    flag = tmp_path / "bug"
    flag.write_text("t_03")
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)"),
                "0002_alter.py": group_change("fleet-alter", "ALTER TABLE a ADD COLUMN b text", fail_on=str(flag)),
            }
        }
    )
    fleets.members_discover(target="tenants")
    with CaptureQueriesContext(connection) as before_any:
        empty = fleets.fleet_plan(target="tenants", limit=2)
    start(canary=1, wave_size=2, concurrency=2, max_failures=1)
    inline()

    with CaptureQueriesContext(connection) as after:
        plan = fleets.fleet_plan(target="tenants", limit=2)

    assert [change["actions"] for change in empty["changes"]] == [{"APPLY": 6}, {"APPLY": 6}]
    # t_00 (canary), t_01 t_02, t_03 (fails on the second change) t_04; halted: t_05 never started.
    assert plan["members"] == 6
    assert [change["actions"] for change in plan["changes"]] == [{"SKIP": 5, "APPLY": 1}, {"SKIP": 4, "APPLY": 2}]
    assert plan["page"]["members"] == [
        {"member": "t_00", "states": {"fleet-create": "APPLIED", "fleet-alter": "APPLIED"}},
        {"member": "t_01", "states": {"fleet-create": "APPLIED", "fleet-alter": "APPLIED"}},
    ]
    assert len(after.captured_queries) == len(before_any.captured_queries)


def test_a_member_claimed_by_a_worker_that_died_before_its_run_began_fails_and_the_fleet_ends(
    group_targets, tenant_schemas, make_pipeline, inline, settings
):
    group_targets({"schemas": tenant_schemas(2)})
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})
    fleet = start(canary=1, wave_size=1, concurrency=1)
    claimed = fleets.member_claim(member_run_id=inline.queued.pop(0))  # ... and the worker dies here
    settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT = 0

    fleets.fleets_reap()
    fleet.refresh_from_db()
    claimed.refresh_from_db()

    assert (claimed.status, claimed.run_id) == ("FAILED", None)
    assert (fleet.result, fleet.status_reason) == ("HALTED", "canary member(s) failed: t_00")


# -- governance -------------------------------------------------------------------------------------------


def test_one_approval_covers_every_member_for_the_approved_checksum(group_targets, tenant_schemas, make_pipeline, inline, settings):
    group_targets({"schemas": tenant_schemas(3)})
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})
    engineer = person("fleet-eng", ENGINEER, operate=("tenants",))
    approver = person("fleet-approver", APPROVER, approve=("tenants",))
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("tenants", "staging", 1)

    unapproved = fleets.fleet_run_start(actor=engineer.actor, target="tenants", source="CLI", canary=1, wave_size=2)
    inline()
    unapproved.refresh_from_db()
    assert (unapproved.result, unapproved.status_reason) == ("HALTED", "canary member(s) failed: t_00")
    assert FleetMemberRun.objects.get(fleet_run=unapproved, member="t_00").run.status == "AWAITING_APPROVAL"

    request = services.request_submit(kind="APPLY", change_id="fleet-create", actor=engineer.actor, reason="tenants release", source="UI").request
    services.request_approve(request_id=request.pk, actor=approver.actor, inline=True)
    approved = fleets.fleet_run_start(actor=engineer.actor, target="tenants", source="CLI", canary=1, wave_size=2)
    inline()
    approved.refresh_from_db()

    assert approved.result == "SUCCEEDED"
    entries = AuditEntry.objects.filter(change_id="fleet-create", state="APPLIED")
    assert sorted(entries.values_list("member", flat=True)) == ["t_00", "t_01", "t_02"]
    assert {entry.details["approval"]["request_id"] for entry in entries} == {request.pk}


def test_the_beat_task_discovers_every_group_and_one_unreachable_group_stops_no_other(group_targets, tenant_schemas, settings):
    configured = group_targets({"schemas": tenant_schemas(2)})
    settings.FLAMINGOCK_TARGET_SYSTEMS = {
        **configured,
        "gone": {"kind": "postgres", "dsn": "postgresql://postgres@127.0.0.1:1/none", "group": {"schemas_query": "SELECT 'x'"}},
    }

    found = fleet_members_discover_task()

    assert DEFAULT_SCHEDULES["flamingock: discover fleet members"] == ("flamingock.fleet_members_discover", 600)
    assert found == {"tenants": {"added": ["t_00", "t_01"], "removed": [], "members": ["t_00", "t_01"]}}
    assert fleets.group_members(target="tenants") == ["t_00", "t_01"]


def test_a_retried_member_is_never_settled_from_its_previous_attempts_run(group_targets, tenant_schemas, make_pipeline, inline, tmp_path):
    group_targets({"schemas": tenant_schemas(1)})
    flag = tmp_path / "bug"
    flag.write_text("t_00")
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))}})
    fleet = start(canary=1)
    inline()
    flag.unlink()
    fleets.fleet_retry(fleet_run_id=fleet.pk, actor=OPERATOR)

    # The reaper advances the fleet between the member's claim and its new run's creation.
    claimed = fleets.member_claim(member_run_id=inline.queued[0])
    fleets.fleet_advance(fleet_run_id=fleet.pk)
    claimed.refresh_from_db()

    assert (claimed.status, claimed.run_id) == ("RUNNING", None)
    FleetMemberRun.objects.filter(pk=claimed.pk).update(status="QUEUED")  # hand it back to the task
    inline()
    fleet.refresh_from_db()
    assert fleet.result == "SUCCEEDED"
