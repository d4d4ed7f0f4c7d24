"""The single-change actions performed directly, where no approval policy governs the target:
undo, fix, skip, re-apply and accept-checksum. Each checks its rule (``pipeline.rules``) and the
actor's permission, then runs in this process; where a policy governs, ``requests`` is the way.
"""

from __future__ import annotations

from audit_app.services import Actor
from changes_app.conf import current_environment
from changes_app.engine.actions import ACTIONS, FIX_KINDS, Kind
from changes_app.errors import ActionRefused, require_reason
from changes_app.governance.permissions import target_operate_check
from changes_app.governance.policy import approvals_required
from changes_app.governance.refusals import refusals_recorded
from changes_app.models import Run
from changes_app.pipeline.rules import Subject, subject_of, undo_cascade
from changes_app.services.runs import run_start


def _operate_check(actor: Actor, subjects: list[Subject]) -> None:
    for subject in subjects:
        target_operate_check(actor, subject.change.target)
    # Where a policy governs a target, the action is a request (requests.request_submit); a
    # direct call must not skip its approvals.
    governed = sorted(
        {s.change.target for s in subjects if approvals_required(target_name=s.change.target, environment=current_environment()) is not None}
    )
    if governed:
        raise ActionRefused(f"approval policies govern {', '.join(governed)} in {current_environment()}: request this action instead")


@refusals_recorded("{kind}", object="change {change_id}")
def change_act(*, kind: str, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Perform the action of request kind ``kind`` directly: its rule, the actor's permission on
    every target it touches (an undo's cascade included), then its run in this process."""
    action = ACTIONS[kind]
    if action.run_kind is None:
        raise ActionRefused(f"{kind} is not performed directly: the pipeline's runs apply {change_id}")
    reason = require_reason(reason)
    subject = subject_of(change_id)
    action.check(subject, action, current_environment())
    _operate_check(actor, undo_cascade(change_id) if action.run_kind == Run.Kind.UNDO else [subject])
    return run_start(actor=actor, source=source, kind=action.run_kind, change_id=change_id, reason=reason, parameters=action.parameters)


def change_undo(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Roll back ``change_id`` and every later applied change of its stage, then hold them."""
    return change_act(kind=Kind.UNDO, change_id=change_id, actor=actor, reason=reason, source=source)


def change_fix(*, change_id: str, resolution: str, actor: Actor, reason: str, source: str) -> Run:
    """Resolve an issue by hand: the operator states whether the change's effect is in place."""
    if resolution not in FIX_KINDS:
        raise ActionRefused("resolution must be 'applied' or 'rolled-back'")
    return change_act(kind=FIX_KINDS[resolution], change_id=change_id, actor=actor, reason=reason, source=source)


def change_skip(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Decide that a change must not run here."""
    return change_act(kind=Kind.SKIP, change_id=change_id, actor=actor, reason=reason, source=source)


def change_reapply(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Release an undone or skipped change so that the next run applies it."""
    return change_act(kind=Kind.REAPPLY, change_id=change_id, actor=actor, reason=reason, source=source)


def change_accept_checksum(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Re-baseline an applied change whose source was edited."""
    return change_act(kind=Kind.ACCEPT_CHECKSUM, change_id=change_id, actor=actor, reason=reason, source=source)
