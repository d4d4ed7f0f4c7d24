"""What a person reads before deciding: the approval gate of an action before it is confirmed, and
everything an approver needs on a request (what will run, the undo cascade, the diff since the
request, the policy and who may decide, the decisions, the run).

The admin's pages and the API's request detail both read these, so they cannot say different
things; the gate is computed by the same policy service that decides (``governance.policy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from audit_app.services import Actor
from changes_app.conf import current_environment
from changes_app.errors import FlamingockError
from changes_app.governance.permissions import PermissionRefused, target_approve_check
from changes_app.governance.policy import GatePreview, gate_preview
from changes_app.models import Approval, ChangeRequest
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.rules import Subject, subject_of, undo_cascade
from changes_app.services.sources import ChangeScript, SourceDiff, change_script, source_diff

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status


def _targets_of(kind: str, change_id: str, target: str) -> tuple[list[str], list[Subject], str]:
    """The target systems an action touches, its undo cascade and why the cascade is refused."""
    if kind != Kind.UNDO:
        return [target], [], ""
    try:
        cascade = undo_cascade(change_id)
    except FlamingockError as refused:
        return [target], [], str(refused)
    return [target, *(s.change.target for s in cascade)], cascade, ""


def action_preview(*, kind: str, change_id: str, actor: Actor) -> GatePreview:
    """What submitting ``kind`` on ``change_id`` will do, as ``request_submit`` decides it: run now,
    or wait for N approvals from the people named."""
    subject = subject_of(change_id)
    targets, _, _ = _targets_of(kind, change_id, subject.change.target)
    preview = gate_preview(targets=targets, environment=current_environment(), requester_id=actor.user_id)
    if kind == Kind.APPLY and preview.required is None:
        # An apply is always a request: where nothing governs it, the next run applies it anyway.
        return GatePreview(preview.targets, preview.environment, 0, ())
    return preview


@dataclass
class CascadeStep:
    change_id: str
    target: str
    state: str
    has_rollback: bool


@dataclass
class RequestReview:
    """A request as an approver decides it."""

    request: ChangeRequest
    #: What will run; ``None`` when the change is no longer in the code.
    script: ChangeScript | None
    cascade: list[CascadeStep]
    cascade_refusal: str
    #: The change's source moved since the request (or, to re-baseline, since it was applied).
    diff: SourceDiff | None
    code_checksum: str
    gate: GatePreview
    #: "" when ``actor`` may decide now; otherwise why not, in words.
    refusal: str
    decisions: list[Approval] = field(default_factory=list)

    @property
    def may_decide(self) -> bool:
        return not self.refusal

    @property
    def moved(self) -> bool:
        return bool(self.code_checksum) and self.code_checksum != self.request.checksum

    def as_dict(self) -> dict[str, Any]:
        return {
            "will_run": self.script.as_dict() if self.script else None,
            "undo_cascade": [vars(step) for step in self.cascade],
            "undo_refused": self.cascade_refusal,
            "code_checksum": self.code_checksum or None,
            "source_moved": self.moved,
            "diff": None
            if self.diff is None
            else {"from": self.diff.old, "to": self.diff.new, "available": self.diff.available, "lines": [text for _, text in self.diff.lines]},
            "gate": self.gate.as_dict(),
            "eligible_approvers": list(self.gate.approvers),
            "may_decide": self.may_decide,
            "why_not": self.refusal,
            # A Django migration's SQL and RunPython code, rendered once when it was requested.
            "rendered": self.request.rendered or None,
        }


def decision_refusal(*, request: ChangeRequest, actor: Actor, targets: list[str]) -> str:
    """Why ``actor`` may not approve or reject ``request`` now ("" if they may): the service's own
    checks, in its order, without writing anything."""
    if request.status != Status.PENDING:
        return f"This request is {request.get_status_display().lower()}: only a pending request is decided."
    # A break-glass review never expires: late, it is overdue and still decided.
    if request.kind != Kind.REVIEW and request.expires_at <= timezone.now():
        return "This request has expired: request it again."
    try:
        for target in targets:
            target_approve_check(actor, target)
    except PermissionRefused:
        return f"You may not decide it: deciding needs Approver on {', '.join(targets)}."
    if (request.requester_id is not None and actor.user_id == request.requester_id) or (
        request.requester_id is None and actor.user_id is None and actor.name == request.requester_name
    ):
        return "You requested it: nobody decides their own request (you may cancel it)."
    if request.approvals.filter(approver_id=actor.user_id).exists():
        return "You have already decided this request."
    return ""


def request_review(*, request: ChangeRequest, actor: Actor) -> RequestReview:
    """Everything an approver needs to decide ``request``, for ``actor``."""
    pipeline = pipeline_load()
    change = pipeline.by_id.get(request.change_id) if pipeline.valid else None
    target = request.target_system.name
    cascade_subjects: list[Subject] = []
    refusal_of_cascade = ""
    targets = [target]
    if change is not None and request.kind == Kind.UNDO and request.status in (Status.PENDING, Status.APPROVED):
        targets, cascade_subjects, refusal_of_cascade = _targets_of(request.kind, request.change_id, target)
    cascade = [CascadeStep(s.change.id, s.change.target, s.state_name, s.change.has_rollback) for s in cascade_subjects]
    code_checksum = change.checksum if change is not None else ""
    diff = None
    if change is not None and code_checksum != request.checksum:
        diff = source_diff(old_checksum=request.checksum, new_checksum=code_checksum, new_source=change.source)
    elif request.kind == Kind.ACCEPT_CHECKSUM and request.recorded_checksum:
        diff = source_diff(old_checksum=request.recorded_checksum, new_checksum=request.checksum, new_source=change.source if change else None)
    gate = gate_preview(targets=targets, environment=request.environment, requester_id=request.requester_id)
    if request.kind == Kind.REVIEW:
        # A break-glass review needs its own count (two at least), whatever the policy says.
        gate = GatePreview(gate.targets, gate.environment, request.required_approvals, gate.approvers)
    return RequestReview(
        request=request,
        script=change_script(change) if change is not None else None,
        cascade=cascade,
        cascade_refusal=refusal_of_cascade,
        diff=diff,
        code_checksum=code_checksum,
        gate=gate,
        refusal=decision_refusal(request=request, actor=actor, targets=list(dict.fromkeys(targets))),
        decisions=list(request.approvals.all()),
    )
