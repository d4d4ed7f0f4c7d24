"""Fleet runs under governance (docs/fleet.md, "Governance").

Two requests have a fleet run as their subject (``change_id`` ``fleet:<id>``), bound to the digest
of the group's change checksums when they were made: FLEET_RETRY (retry the failed members, where a
policy governs the group in the environment) and FLEET_CONTINUE (start the waves after the canary,
where the group's policy asks for a fresh approval). Approvers decide them with ``approve`` on the
group's target system, never their requester; ``fleets.services`` executes them when approved.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from audit_app.services import Actor
from changes_app.errors import RequestStale
from changes_app.fleets.executor import group_pipeline
from changes_app.governance.policy import approvals_required
from changes_app.models import ApprovalPolicy, ChangeRequest, FleetRun
from changes_app.pipeline.discovery import pipeline_load
from changes_app.services.requests import subject_request_open

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status


def fleet_subject(fleet_run_id: uuid.UUID | str) -> str:
    """The ``change_id`` of a fleet run's requests."""
    return f"fleet:{fleet_run_id}"


def checksums_digest(checksums: dict[str, str]) -> str:
    """One checksum for a set of change checksums: sha256 of their canonical JSON."""
    return hashlib.sha256(json.dumps(checksums, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def group_checksums(target: str) -> dict[str, str]:
    """The group's changes and their checksums in the code now."""
    return {change.id: change.checksum for stage in group_pipeline(pipeline_load(), target).stages for change in stage.changes}


def retry_governed(fleet: FleetRun) -> int | None:
    """The approvals a retry of ``fleet`` needs; ``None`` where no policy governs its group (it runs at once)."""
    return approvals_required(target_name=fleet.target, environment=fleet.environment)


def canary_approval_required(fleet: FleetRun) -> bool:
    """Whether the group's policy in the fleet's environment asks for a fresh approval after the canary."""
    return ApprovalPolicy.objects.filter(target_system__name=fleet.target, environment=fleet.environment, fleet_canary_approval=True).exists()


def canary_approved(fleet: FleetRun) -> bool:
    """Whether a FLEET_CONTINUE request of ``fleet`` was approved."""
    return ChangeRequest.objects.filter(
        kind=Kind.FLEET_CONTINUE, change_id=fleet_subject(fleet.pk), environment=fleet.environment, status__in=[Status.APPROVED, Status.EXECUTED]
    ).exists()


def continue_request(fleet: FleetRun) -> ChangeRequest | None:
    """The latest FLEET_CONTINUE request of ``fleet``."""
    return ChangeRequest.objects.filter(kind=Kind.FLEET_CONTINUE, change_id=fleet_subject(fleet.pk)).order_by("-id").first()


def _open(kind: str, fleet: FleetRun, *, actor: Actor, reason: str, source: str, required: int, rendered: dict) -> ChangeRequest:
    checksums = group_checksums(fleet.target)
    return subject_request_open(
        kind=kind,
        subject_id=fleet_subject(fleet.pk),
        checksum=checksums_digest(checksums),
        target=fleet.target,
        actor=actor,
        reason=reason,
        source=source,
        rendered={"fleet_run": str(fleet.pk), "target": fleet.target, "checksums": checksums, **rendered},
        required=required,
    )


def retry_request_open(fleet: FleetRun, *, actor: Actor, reason: str, source: str, required: int, members: list[str]) -> ChangeRequest:
    """Request the retry of ``members`` of ``fleet`` (the caller checked the retry and the actor)."""
    return _open(Kind.FLEET_RETRY, fleet, actor=actor, reason=reason, source=source, required=required, rendered={"members": members})


def continue_request_open(fleet: FleetRun, *, succeeded: int) -> ChangeRequest:
    """Request, as the fleet run's starter, that the waves after the canary start: at least one
    approval, whatever the policy's count (the policy asked for a fresh one)."""
    required = max(approvals_required(target_name=fleet.target, environment=fleet.environment) or 0, 1)
    starter = Actor(name=fleet.actor, user_id=fleet.started_by_id, via=fleet.source.lower())
    reason = f"continue fleet run {fleet.pk} on {fleet.target} after its canary ({succeeded} member(s) succeeded)"
    return _open(Kind.FLEET_CONTINUE, fleet, actor=starter, reason=reason, source=fleet.source, required=required, rendered={})


def request_binding_check(request: ChangeRequest, fleet: FleetRun | None) -> None:
    """A fleet request still matches its fleet run and the group's code (``RequestStale`` otherwise)."""
    if fleet is None:
        raise RequestStale(f"request #{request.pk}: {request.change_id} no longer exists")
    if request.kind == Kind.FLEET_CONTINUE and fleet.status != FleetRun.Status.AWAITING_APPROVAL:
        raise RequestStale(f"request #{request.pk}: fleet run {fleet.pk} is {fleet.result or fleet.status}, not awaiting approval")
    if request.kind == Kind.FLEET_RETRY and fleet.status != FleetRun.Status.FINISHED:
        raise RequestStale(f"request #{request.pk}: fleet run {fleet.pk} is running again")
    now = checksums_digest(group_checksums(fleet.target))
    if now != request.checksum:
        raise RequestStale(
            f"request #{request.pk} was made for checksums {request.checksum[:12]} of {fleet.target}'s changes, which are now "
            f"{now[:12]}: the changes were edited after the request"
        )
