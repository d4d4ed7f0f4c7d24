"""A member's execution on a worker (docs/fleet.md, "Where a member's time goes"): a setup error ends
the member at once instead of leaving it for the reaper, a child run sends ``run_finished`` like every
run, a worker keeps one target connection for the schemas it runs and resets it between tenants, the
member lock's claim moves the fence only when it wins, the fleet run's representation is a page of
members with counts from SQL, and the fleet plan leaves removed members out."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app.fleets import services as fleets
from changes_app.fleets.locks import MemberLeaseLock, member_lock_name
from changes_app.models import Fence, FleetMemberRun, FleetRun, LockLease, Run
from changes_app.services.representations import fleet_run_data
from changes_app.services.runs import run_finished
from changes_app.targets.base import TargetUnavailable
from tests.changes_app.api.conftest import client_for
from tests.changes_app.fleets.conftest import group_change
from tests.support.governance import person

pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR = Actor(name="tests", via="tests")


@pytest.fixture
def one_change(group_targets, tenant_schemas, make_pipeline):
    def make(count: int) -> list[str]:
        names = tenant_schemas(count)
        group_targets({"schemas": names})
        make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)")}})
        return names

    return make


def start(**policy) -> FleetRun:
    return fleets.fleet_run_start(actor=OPERATOR, target="tenants", source="CLI", **policy)


# -- a setup error ends the member at once ------------------------------------------------------------


def test_a_member_whose_target_cannot_be_built_ends_now_with_its_run_finished_and_no_lock_held(one_change, inline, monkeypatch):
    one_change(2)

    def unreachable(target, member):
        raise TargetUnavailable(f"target {target!r} cannot be reached")

    monkeypatch.setattr(fleets, "member_target_reused", unreachable)
    fleet = start(canary=1, wave_size=1, concurrency=1)
    inline()
    fleet.refresh_from_db()
    member = FleetMemberRun.objects.get(member="t_00")

    # Not RUNNING until the reaper: the run ended in the member's own task, the fleet with it.
    assert (member.status, member.run.status) == ("FAILED", "ABORTED")
    assert "TargetUnavailable: target 'tenants' cannot be reached" in member.run.status_reason
    assert (fleet.status, fleet.result) == ("FINISHED", "HALTED")
    assert not LockLease.objects.exclude(owner="").exists()
    assert list(AuditEntry.objects.filter(run_id=member.run_id).order_by("seq").values_list("event", flat=True)) == ["run.started", "run.aborted"]


def test_a_member_whose_run_cannot_be_recorded_fails_now_without_a_run(one_change, inline, monkeypatch):
    one_change(2)

    def broken(*args, **kwargs):
        raise RuntimeError("the runs table is gone")

    monkeypatch.setattr(fleets, "_member_run_create", broken)
    fleet = start(canary=1, wave_size=1, concurrency=1)
    inline()
    fleet.refresh_from_db()
    member = FleetMemberRun.objects.get(member="t_00")

    assert (member.status, member.run_id) == ("FAILED", None)
    assert member.reason == "the member's run could not start: RuntimeError: the runs table is gone"
    assert (fleet.status, fleet.result) == ("FINISHED", "HALTED")
    assert not Run.objects.exists()


# -- run_finished -------------------------------------------------------------------------------------


def test_every_child_run_sends_run_finished_and_a_failing_receiver_changes_no_outcome(one_change, inline):
    one_change(3)
    heard: list[tuple[str, str]] = []

    def listen(sender, *, run, **kwargs):
        heard.append((run.parameters["member"], run.status))

    def broken(sender, *, run, **kwargs):
        raise RuntimeError("a receiver failed")

    run_finished.connect(listen)
    run_finished.connect(broken)
    try:
        fleet = start(canary=1, wave_size=2, concurrency=2)
        inline()
    finally:
        run_finished.disconnect(listen)
        run_finished.disconnect(broken)
    fleet.refresh_from_db()

    assert sorted(heard) == [("t_00", "SUCCEEDED"), ("t_01", "SUCCEEDED"), ("t_02", "SUCCEEDED")]
    assert (fleet.result, fleets.fleet_counts(fleet_run_id=fleet.pk)) == ("SUCCEEDED", {"SUCCEEDED": 3})


# -- one target connection per worker, reset between tenants ----------------------------------------------


def test_a_worker_reuses_its_connection_across_members_and_nothing_a_change_set_follows_it(
    group_targets, tenant_schemas, make_pipeline, external_pg, inline
):
    names = tenant_schemas(3)
    group_targets({"schemas": names})
    seen = "CREATE TABLE seen AS SELECT pg_backend_pid() AS pid, current_setting('application_name') AS app, current_schema() AS schema"
    make_pipeline(
        {
            "main": {
                "0001_seen.py": group_change("fleet-seen", seen),
                # A session setting (not LOCAL): it outlives the change's transaction on its connection.
                "0002_leak.py": group_change("fleet-leak", "SET application_name = 'leaked-from-another-tenant'"),
            }
        }
    )
    fleet = start(canary=1, wave_size=2, concurrency=1)
    inline()
    fleet.refresh_from_db()

    with psycopg.connect(external_pg, autocommit=True) as db:
        rows = [db.execute(f'SELECT pid, app, schema FROM "{name}".seen').fetchone() for name in names]
    assert fleet.result == "SUCCEEDED"
    assert len({pid for pid, _, _ in rows}) == 1  # one connection served every member
    assert [(app, schema) for _, app, schema in rows] == [("", name) for name in names]


# -- the member lock ------------------------------------------------------------------------------------


def test_a_member_lock_claim_that_loses_never_moves_the_fence(group_targets):
    name = member_lock_name(environment="test", target="tenants", member="t_00")
    first, second = MemberLeaseLock(name, lease_seconds=30), MemberLeaseLock(name, lease_seconds=30)

    held = first.try_acquire(run_id=None, actor=OPERATOR)
    refused = second.try_acquire(run_id=None, actor=OPERATOR)
    token_while_held = Fence.objects.get(name=name).token
    held.release()
    taken = second.try_acquire(run_id=None, actor=OPERATOR)

    assert (held.token, refused, token_while_held) == (1, None, 1)
    assert taken.token == 2
    assert LockLease.objects.get(name=name).token == 2
    taken.release()
    assert LockLease.objects.get(name=name).owner == ""


# -- the fleet run's representation: counts in SQL, a page of members -----------------------------------


def test_fleet_run_data_counts_in_sql_and_lists_a_page_of_members_in_a_fixed_number_of_queries(one_change, inline, tmp_path):
    one_change(6)
    fleet = start(canary=1, wave_size=2, concurrency=2)
    inline()
    fleet.refresh_from_db()

    with CaptureQueriesContext(connection) as small:
        page = fleet_run_data(fleet, offset=2, limit=2)
    with CaptureQueriesContext(connection) as whole:
        every = fleet_run_data(fleet, limit=100)

    assert page["counts"] == every["counts"] == {"SUCCEEDED": 6}
    assert [member["member"] for member in page["members"]] == ["t_02", "t_03"]
    assert [(member["member"], member["wave"]) for member in every["members"]][:3] == [("t_00", 0), ("t_01", 1), ("t_02", 1)]
    assert page["members_page"] == {"offset": 2, "limit": 2, "total": 6}
    assert len(small.captured_queries) == len(whole.captured_queries)


def test_the_api_pages_a_fleet_runs_members_and_refuses_a_bad_page(one_change, inline, targets):
    one_change(5)
    fleet = start(canary=1, wave_size=2, concurrency=2)
    inline()
    client = client_for(person("page-admin", superuser=True))

    page = client.get(f"/api/v1/fleets/{fleet.pk}/?offset=1&limit=2")
    succeeded = client.get(f"/api/v1/fleets/{fleet.pk}/?status=SUCCEEDED&offset=4&limit=2")

    assert page.status_code == 200
    assert [member["member"] for member in page.json()["members"]] == ["t_01", "t_02"]
    assert page.json()["members_page"] == {"offset": 1, "limit": 2, "total": 5}
    assert page.json()["counts"] == {"SUCCEEDED": 5}
    assert [member["member"] for member in succeeded.json()["members"]] == ["t_04"]
    for bad in ("limit=0", "limit=501", "offset=-1", "limit=x"):
        assert client.get(f"/api/v1/fleets/{fleet.pk}/?{bad}").status_code == 400, bad


# -- the fleet plan ------------------------------------------------------------------------------------------


def test_the_fleet_plan_leaves_out_the_states_of_removed_members(one_change, inline, group_targets):
    names = one_change(4)
    start(canary=1, wave_size=3, concurrency=3)
    inline()
    group_targets({"schemas": names[:2]})  # t_02 and t_03 leave the group
    fleets.members_discover(target="tenants")

    plan = fleets.fleet_plan(target="tenants", limit=10)

    assert (plan["members"], plan["changes"][0]["actions"]) == (2, {"SKIP": 2})
    assert [member["member"] for member in plan["page"]["members"]] == ["t_00", "t_01"]
