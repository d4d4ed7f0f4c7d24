"""Drift per member, in batches (docs/fleet.md, "Drift per member").

Each beat tick checks the next batch of members of every target group, the least recently checked
first (``FleetMember.drift_checked_at`` is the cursor carried between ticks): for each change applied
on the member, its recorded checksum against the code (``CHECKSUM_MISMATCH``), then, where the change
defines ``verify``, the probe on the member's own connection (``VERIFY_FAILED``, ``PROBE_FAILED``).
A fleet of N members is covered every N / batch ticks with one task per tick, whatever N is: the
broker sees one message per tick. The findings are recorded by ``drift.checks.member_drift_record``
(one per member, change and kind, one notification per group), which the beat task calls with what
this module observed.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from audit_app.models import APPLIED_STATES, MemberChangeState
from changes_app.conf import current_environment
from changes_app.engine.probes import ProbeContext, verify_probe
from changes_app.fleets.executor import group_pipeline
from changes_app.fleets.groups import group_names, member_target
from changes_app.models import FleetMember
from changes_app.pipeline.discovery import pipeline_load
from changes_app.services.workers import worker_stale_check

logger = logging.getLogger("flamingock.fleets.drift")

#: Members checked per tick when ``FLAMINGOCK_FLEET_DRIFT_BATCH`` is not set.
DEFAULT_BATCH = 50


def drift_batch_size() -> int:
    """Members checked per beat tick (``FLAMINGOCK_FLEET_DRIFT_BATCH``)."""
    return max(1, int(getattr(settings, "FLAMINGOCK_FLEET_DRIFT_BATCH", DEFAULT_BATCH)))


def member_probe(change, *, target: str, member: str, timeout: float) -> tuple[bool | None, str]:
    """Run ``change``'s verify on ``member``'s own connection in a thread; give up after ``timeout``
    seconds. Returns (present, error): present is ``None`` when the probe raised or hung."""
    return verify_probe(
        change,
        lambda: member_target(target, member),
        ProbeContext(change.id, current_environment(), member=member),
        timeout=timeout,
        name=f"flamingock-member-probe-{member}",
    )


def members_drift_observe(*, batch: int | None = None) -> dict[str, Any]:
    """Check the next ``batch`` members (the least recently checked first) and say what was seen:
    ``checked`` (target, member), ``conditions`` (kind, summary, evidence, change, member) and
    ``undecided`` (a probe that raced a run of the member: its finding is left as it is)."""
    # A stale worker judges nothing (docs/semantics.md, Workers): ``WorkerStale`` hands the task back.
    worker_stale_check()
    batch = batch or drift_batch_size()
    observed: dict[str, Any] = {"checked": [], "conditions": [], "undecided": []}
    groups = group_names()
    if not groups:
        return observed
    pipeline = pipeline_load()
    if not pipeline.valid:
        logger.warning("member drift: the pipeline is not valid; no member checked this time")
        return observed
    rows = list(
        FleetMember.objects.filter(target__in=groups, removed_at=None)
        .order_by(F("drift_checked_at").asc(nulls_first=True), "target", "name")
        .values_list("pk", "target", "name")[:batch]
    )
    timeout = settings.FLAMINGOCK_DRIFT_PROBE_TIMEOUT
    environment = current_environment()
    by_target: dict[str, list[str]] = {}
    for _, target, name in rows:
        by_target.setdefault(target, []).append(name)
    for target, members in by_target.items():
        changes = [change for stage in group_pipeline(pipeline, target).stages for change in stage.changes if change.applies_in(environment)]
        states = {
            (row.member, row.change_id): row
            for row in MemberChangeState.objects.filter(member__in=members, change_id__in=[change.id for change in changes])
        }
        for member in members:
            observed["checked"].append({"target": target, "member": member})
            for change in changes:
                state = states.get((member, change.id))
                if state is None or state.state not in APPLIED_STATES:
                    continue
                observed["conditions"] += _member_change_observe(change, state, target=target, member=member, timeout=timeout, observed=observed)
    FleetMember.objects.filter(pk__in=[pk for pk, _, _ in rows]).update(drift_checked_at=timezone.now())
    return observed


def _member_change_observe(change, state: MemberChangeState, *, target: str, member: str, timeout: float, observed: dict) -> list[dict[str, Any]]:
    where = {"change_id": change.id, "target": target, "stage": change.stage, "member": member}
    if state.checksum and state.checksum != change.checksum:
        evidence = {"recorded_checksum": state.checksum, "code_checksum": change.checksum, "path": change.path}
        return [{"kind": "CHECKSUM_MISMATCH", "summary": f"{change.id} was edited after it was applied on {member}", "evidence": evidence, **where}]
    if not change.has_verify:
        return []
    present, error = member_probe(change, target=target, member=member, timeout=timeout)
    latest = MemberChangeState.objects.filter(member=member, change_id=change.id).values_list("entry_id", flat=True).first()
    if latest != state.entry_id:
        # A run of the member moved the change while it was probed: what the probe saw says nothing.
        observed["undecided"].append({"target": target, "member": member, "change_id": change.id})
        return []
    evidence = {"state": state.state, "entry_id": state.entry_id, "timeout_seconds": timeout}
    if present is None:
        observed["undecided"].append({"target": target, "member": member, "change_id": change.id})
        return [
            {
                "kind": "PROBE_FAILED",
                "summary": f"the verify probe of {change.id} on {member} failed: {error}",
                "evidence": {**evidence, "error": error},
                **where,
            }
        ]
    if not present:
        return [
            {
                "kind": "VERIFY_FAILED",
                "summary": f"the effect of {change.id} is absent from member {member} of {target}",
                "evidence": evidence,
                **where,
            }
        ]
    return []
