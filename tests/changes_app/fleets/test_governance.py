"""Fleet runs under governance (docs/fleet.md, "Governance"): "retry failed members" is a request
where a policy governs the group, bound to the fleet run and the checksums of the group's changes; a
policy may ask for a fresh approval after the canary; a resume counts only new failures toward the
halt; permission is checked against the fleet run before its state is told."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app import services
from changes_app.conf import current_environment
from changes_app.errors import ActionRefused, RequestDuplicate, RequestRefused, RequestStale
from changes_app.fleets import services as fleets
from changes_app.fleets.governance import checksums_digest, fleet_subject, group_checksums
from changes_app.governance.permissions import PermissionRefused, SelfDecisionRefused
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRequest, FleetMemberRun, FleetRun
from changes_app.services.representations import fleet_run_data
from tests.changes_app.api.conftest import client_for
from tests.changes_app.fleets.conftest import group_change
from tests.support.governance import person, policy, snapshot
from tests.support.trails import cli

pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR = Actor(name="tests", via="tests")


@pytest.fixture
def world(group_targets, tenant_schemas, make_pipeline, tmp_path):
    """Six schemas, one change that fails on the members named in ``flag``; an engineer who
    operates the group, an approver of it, and someone with neither."""
    group_targets({"schemas": tenant_schemas(6)})
    flag = tmp_path / "bug"

    def code(sql: str = "CREATE TABLE a (id integer)") -> None:
        make_pipeline({"main": {"0001_create.py": group_change("fleet-create", sql, fail_on=str(flag))}})

    code()
    # The engineer may approve too: only being its requester stops them deciding a request.
    engineer = person("fleet-engineer", ENGINEER, APPROVER, operate=("tenants",), approve=("tenants",))
    approver = person("fleet-approver", APPROVER, approve=("tenants",))
    outsider = person("fleet-outsider")
    return {"flag": flag, "code": code, "engineer": engineer, "approver": approver, "outsider": outsider}


def governed(world, required: int = 1, *, canary_approval: bool = False) -> None:
    """A policy on the group, and the group's change approved to apply (members' runs pass the gate)."""
    row = policy("tenants", current_environment(), required)
    row.fleet_canary_approval = canary_approval
    row.save()
    if required:
        applied = services.request_create(kind="APPLY", change_id="fleet-create", actor=world["engineer"].actor, reason="tenants need table a")
        services.request_approve(request_id=applied.pk, actor=world["approver"].actor)


def halted_fleet(world, inline) -> FleetRun:
    world["flag"].write_text("t_01")
    fleet = fleets.fleet_run_start(actor=world["engineer"].actor, target="tenants", source="CLI", canary=2, wave_size=2, concurrency=2)
    inline()
    fleet.refresh_from_db()
    assert fleet.result == "HALTED"
    return fleet


def events(*names: str) -> list[str]:
    return list(AuditEntry.objects.filter(event__in=names).order_by("seq").values_list("event", flat=True))


def statuses(fleet: FleetRun) -> dict[str, str]:
    return dict(FleetMemberRun.objects.filter(fleet_run=fleet).values_list("member", "status"))


def refusals(reason: str) -> int:
    return AuditEntry.objects.filter(event="access.refused", details__reason=reason).count()


# -- retry failed members: a governed action ---------------------------------------------------------------


def test_retry_where_a_policy_governs_the_group_is_a_request_bound_to_the_run_and_checksums_and_runs_when_approved(world, inline):
    fleet = halted_fleet(world, inline)
    governed(world)
    world["flag"].unlink()  # the fix

    asked = fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor, reason="the fix of t_01 is deployed")

    request = ChangeRequest.objects.get(kind="FLEET_RETRY")
    assert (asked.status, asked.result) == ("FINISHED", "HALTED")  # nothing retried yet
    assert (request.status, request.change_id, request.required_approvals) == ("PENDING", fleet_subject(fleet.pk), 1)
    assert request.checksum == checksums_digest(group_checksums("tenants"))
    assert request.rendered["members"] == ["t_01", "t_02", "t_03", "t_04", "t_05"]
    assert request.requester_name == "fleet-engineer" and request.target_system.name == "tenants"
    assert [row["kind"] for row in fleet_run_data(asked)["requests"]] == ["FLEET_RETRY"]
    with pytest.raises(RequestDuplicate):
        fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)

    with pytest.raises(SelfDecisionRefused):
        services.request_approve(request_id=request.pk, actor=world["engineer"].actor)
    assert refusals("self_decision") == 1
    services.request_approve(request_id=request.pk, actor=world["approver"].actor)
    inline()
    fleet.refresh_from_db()
    request.refresh_from_db()

    assert fleet.result == "SUCCEEDED"
    assert request.status == "EXECUTED" and request.executed_at is not None
    entry = AuditEntry.objects.get(event="fleet.retry_requested")
    assert (entry.actor, entry.details["request_id"], entry.details["checksum"]) == ("fleet-engineer", request.pk, request.checksum)
    assert audit_verify().ok


def test_a_retry_request_made_for_other_checksums_is_stale_and_retries_nothing(world, inline):
    fleet = halted_fleet(world, inline)
    governed(world)
    fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    request = ChangeRequest.objects.get(kind="FLEET_RETRY")
    world["code"]("CREATE TABLE a (id bigint)")  # edited after the request
    before = statuses(fleet)

    with pytest.raises(RequestStale, match="changes were edited after the request"):
        services.request_approve(request_id=request.pk, actor=world["approver"].actor)

    request.refresh_from_db()
    fleet.refresh_from_db()
    assert request.status == "PENDING" and fleet.result == "HALTED"
    assert statuses(fleet) == before and not inline.queued
    assert refusals("stale_checksum") == 1


def test_a_policy_requiring_no_approval_retries_at_once_and_records_the_request(world, inline):
    fleet = halted_fleet(world, inline)
    governed(world, required=0)
    world["flag"].unlink()

    retried = fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    inline()
    fleet.refresh_from_db()

    assert retried.status == "RUNNING"
    assert fleet.result == "SUCCEEDED"
    request = ChangeRequest.objects.get(kind="FLEET_RETRY")
    assert request.status == "EXECUTED"
    assert AuditEntry.objects.get(event="request.approved", details__request_id=request.pk).details["automatic"] is True


def test_with_no_policy_the_retry_runs_at_once_without_a_request(world, inline):
    fleet = halted_fleet(world, inline)
    world["flag"].unlink()

    fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "SUCCEEDED"
    assert not ChangeRequest.objects.filter(kind="FLEET_RETRY").exists()


def test_a_rejected_retry_request_leaves_the_fleet_run_as_it_was(world, inline):
    fleet = halted_fleet(world, inline)
    governed(world)
    fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    request = ChangeRequest.objects.get(kind="FLEET_RETRY")

    services.request_reject(request_id=request.pk, actor=world["approver"].actor, comment="not before the incident review")

    fleet.refresh_from_db()
    assert (fleet.status, fleet.result) == ("FINISHED", "HALTED")
    assert not inline.queued


def test_the_api_and_the_command_line_retry_through_the_same_governed_service(world, inline, monkeypatch):
    fleet = halted_fleet(world, inline)
    governed(world)

    response = client_for(world["engineer"]).post(f"/api/v1/fleets/{fleet.pk}/retry/")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["result"]) == ("FINISHED", "HALTED")
    assert [(row["kind"], row["status"]) for row in body["requests"]] == [("FLEET_RETRY", "PENDING")]
    assert body == fleet_run_data(FleetRun.objects.get(pk=fleet.pk))

    # The command line's own request (its operator is another requester): exit 4, and how to decide it.
    ChangeRequest.objects.update(status="CANCELLED")
    asked = cli("fleet", "retry", str(fleet.pk))
    assert asked.code == 4, asked.out + asked.err
    pending = ChangeRequest.objects.get(kind="FLEET_RETRY", status="PENDING")
    assert f"request #{pending.pk} (FLEET_RETRY) awaits 1 approval(s): python manage.py flamingock approve {pending.pk}" in asked.out
    assert cli("fleet", "status", str(fleet.pk)).code == 3  # still HALTED until the request is approved


def test_the_command_line_returns_when_a_fleet_run_awaits_approval_after_its_canary(world, inline):
    governed(world, canary_approval=True)

    started = cli("fleet", "run", "--target", "tenants", "--canary", "1", "--wave", "2", "--no-wait", "--json")
    inline()
    waiting = cli("fleet", "status", started.json()["id"])

    assert waiting.code == 4, waiting.out + waiting.err
    assert "AWAITING_APPROVAL" in waiting.out and "(FLEET_CONTINUE) awaits 1 approval(s)" in waiting.out


def test_execute_refuses_a_fleet_request_it_does_not_run_itself(world, inline):
    fleet = halted_fleet(world, inline)
    governed(world)
    fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    request = ChangeRequest.objects.get(kind="FLEET_RETRY")

    with pytest.raises(RequestRefused, match="executed when it is approved"):
        services.request_execute(request_id=request.pk)


# -- permission before state ---------------------------------------------------------------------------------


def test_someone_without_permission_is_refused_before_learning_that_the_run_is_still_running(world, inline):
    fleet = fleets.fleet_run_start(actor=world["engineer"].actor, target="tenants", source="CLI", canary=2, wave_size=2, concurrency=2)
    assert fleet.status == "RUNNING"
    before = snapshot()

    for service in (fleets.fleet_retry, fleets.fleet_resume):
        with pytest.raises(PermissionRefused) as refused:
            service(fleet_run_id=fleet.pk, actor=world["outsider"].actor)
        assert "still running" not in str(refused.value)

    assert snapshot() == before
    assert AuditEntry.objects.filter(event="access.refused", details__action__in=["fleet.retry", "fleet.resume"]).count() >= 1
    with pytest.raises(ActionRefused, match="still running"):
        fleets.fleet_retry(fleet_run_id=fleet.pk, actor=world["engineer"].actor)


# -- resume after a halt -----------------------------------------------------------------------------------------


def test_resume_after_a_halt_counts_only_failures_since_the_resume(group_targets, tenant_schemas, make_pipeline, inline, tmp_path):
    group_targets({"schemas": tenant_schemas(6)})
    flag = tmp_path / "bug"
    flag.write_text("t_02 t_03")
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))}})
    fleet = fleets.fleet_run_start(actor=OPERATOR, target="tenants", source="CLI", canary=1, wave_size=2, concurrency=2, max_failures=2)
    inline()
    fleet.refresh_from_db()
    assert fleet.result == "HALTED" and statuses(fleet)["t_05"] == "NOT_STARTED"

    resumed = fleets.fleet_resume(fleet_run_id=fleet.pk, actor=OPERATOR)
    assert resumed.status == "RUNNING" and not resumed.halted  # the 2 earlier failures do not halt it again
    inline()
    fleet.refresh_from_db()

    assert statuses(fleet)["t_05"] == "SUCCEEDED"
    assert fleet.result == "PARTIAL"  # the failed members stay failed: a retry is for them
    assert events("fleet.halted") == ["fleet.halted"]


def test_resume_after_a_canary_halt_goes_on_but_a_new_failure_halts_again(group_targets, tenant_schemas, make_pipeline, inline, tmp_path):
    group_targets({"schemas": tenant_schemas(5)})
    flag = tmp_path / "bug"
    flag.write_text("t_00")
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))}})
    fleet = fleets.fleet_run_start(actor=OPERATOR, target="tenants", source="CLI", canary=1, wave_size=2, concurrency=1, max_failures=1)
    inline()
    fleet.refresh_from_db()
    assert fleet.status_reason == "canary member(s) failed: t_00"

    flag.write_text("t_02")
    fleets.fleet_resume(fleet_run_id=fleet.pk, actor=OPERATOR)
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "HALTED"
    assert fleet.status_reason == "1 member(s) failed (halt at 1)"  # t_02's, not t_00's again
    assert statuses(fleet) == {"t_00": "FAILED", "t_01": "SUCCEEDED", "t_02": "FAILED", "t_03": "NOT_STARTED", "t_04": "NOT_STARTED"}


# -- a fresh approval after the canary -----------------------------------------------------------------------------


def canary_fleet(world, inline) -> FleetRun:
    governed(world, canary_approval=True)
    fleet = fleets.fleet_run_start(actor=world["engineer"].actor, target="tenants", source="CLI", canary=2, wave_size=2, concurrency=2)
    inline()
    fleet.refresh_from_db()
    return fleet


def test_a_policy_asking_for_approval_after_the_canary_stops_there_and_approval_continues_the_waves(world, inline):
    fleet = canary_fleet(world, inline)

    request = ChangeRequest.objects.get(kind="FLEET_CONTINUE")
    assert fleet.status == "AWAITING_APPROVAL" and fleet.wave == 0
    assert statuses(fleet) == {"t_00": "SUCCEEDED", "t_01": "SUCCEEDED", **{f"t_0{i}": "PENDING" for i in range(2, 6)}}
    assert (request.status, request.requester_name, request.change_id) == ("PENDING", "fleet-engineer", fleet_subject(fleet.pk))
    assert fleets.fleet_advance(fleet_run_id=fleet.pk).status == "AWAITING_APPROVAL"  # the reaper's call changes nothing
    assert not inline.queued
    with pytest.raises(SelfDecisionRefused):
        services.request_approve(request_id=request.pk, actor=world["engineer"].actor)

    services.request_approve(request_id=request.pk, actor=world["approver"].actor)
    inline()
    fleet.refresh_from_db()
    request.refresh_from_db()

    assert fleet.result == "SUCCEEDED" and request.status == "EXECUTED"
    assert events("fleet.awaiting_approval", "fleet.continued", "fleet.finished") == ["fleet.awaiting_approval", "fleet.continued", "fleet.finished"]
    assert [entry.details["wave"] for entry in AuditEntry.objects.filter(event="fleet.wave_started").order_by("seq")] == [0, 1, 2]
    assert audit_verify().ok


def test_a_rejected_continuation_ends_the_fleet_run_halted_and_audited(world, inline):
    fleet = canary_fleet(world, inline)
    request = ChangeRequest.objects.get(kind="FLEET_CONTINUE")

    services.request_reject(request_id=request.pk, actor=world["approver"].actor, comment="latency doubled on the canary")
    fleet.refresh_from_db()

    assert (fleet.status, fleet.result) == ("FINISHED", "HALTED")
    assert "was rejected" in fleet.status_reason and "latency doubled" in fleet.status_reason
    assert set(statuses(fleet).values()) == {"SUCCEEDED", "NOT_STARTED"}
    halted = AuditEntry.objects.get(event="fleet.halted")
    assert (halted.actor, halted.details["request_id"]) == ("fleet-approver", request.pk)
    assert events("fleet.finished") == ["fleet.finished"]
    assert not inline.queued


def test_a_continuation_request_that_expires_halts_the_fleet_run_at_the_reaper(world, inline):
    fleet = canary_fleet(world, inline)
    ChangeRequest.objects.filter(kind="FLEET_CONTINUE").update(expires_at=timezone.now() - timedelta(minutes=1))

    services.requests_expire()
    fleets.fleets_reap()
    fleet.refresh_from_db()

    assert fleet.result == "HALTED" and "expired" in fleet.status_reason


def test_a_fleet_run_awaiting_approval_can_be_cancelled(world, inline):
    fleet = canary_fleet(world, inline)

    fleets.fleet_cancel(fleet_run_id=fleet.pk, actor=world["engineer"].actor)
    fleet.refresh_from_db()

    assert fleet.result == "CANCELLED"
    request = ChangeRequest.objects.get(kind="FLEET_CONTINUE")
    # Its request is withdrawn with the fleet run, not left for approvers to find.
    assert request.status == ChangeRequest.Status.CANCELLED and "was cancelled by" in request.status_reason
    assert AuditEntry.objects.filter(event="request.cancelled", details__request_id=request.pk).exists()
    with pytest.raises(services.FlamingockError):
        services.request_approve(request_id=request.pk, actor=world["approver"].actor)


def test_without_the_policy_option_the_waves_go_on_after_the_canary(world, inline):
    governed(world, canary_approval=False)
    fleet = fleets.fleet_run_start(actor=world["engineer"].actor, target="tenants", source="CLI", canary=2, wave_size=2, concurrency=2)
    inline()
    fleet.refresh_from_db()

    assert fleet.result == "SUCCEEDED"
    assert not ChangeRequest.objects.filter(kind="FLEET_CONTINUE").exists()


def test_policy_set_records_the_canary_option_and_refuses_a_bad_value(world):
    admin = person("policy-admin", superuser=True)
    before = snapshot()

    with pytest.raises(Exception, match="true or false"):
        services.policy_set(
            target_name="tenants", environment=current_environment(), required_approvals=1, actor=admin.actor, reason="x", fleet_canary_approval="yes"
        )
    assert snapshot() == before
    row = services.policy_set(
        target_name="tenants",
        environment=current_environment(),
        required_approvals=1,
        actor=admin.actor,
        reason="canary first",
        fleet_canary_approval=True,
    )

    assert row.fleet_canary_approval is True
    entry = AuditEntry.objects.filter(event="policy.changed").latest("seq")
    assert (entry.details["previous_fleet_canary_approval"], entry.details["fleet_canary_approval"]) == (None, True)
