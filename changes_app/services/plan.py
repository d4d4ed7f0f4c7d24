"""What the next run would do: the plan, from code and ledger, never touching a target; and the
deploy gate that says whether anything is drifted, blocked, awaiting approval or pending."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from django.conf import settings

from audit_app.services import change_states
from changes_app.conf import current_environment
from changes_app.definitions import ChangeDefinition
from changes_app.engine.executor import strategies_for
from changes_app.errors import PipelineInvalid
from changes_app.governance.policy import approval_gate
from changes_app.models import Finding
from changes_app.pipeline.discovery import Pipeline, pipeline_load
from changes_app.pipeline.plan import Action, Plan, plan_build
from changes_app.services.representations import validation_data
from changes_app.targets.base import target_systems


def approval_hook() -> Callable[[ChangeDefinition], str] | None:
    """Where governance (approvals) plugs into the resolver: ``None`` where no policy requires one."""
    return approval_gate(environment=current_environment())


def pipeline_plan(*, pipeline: Pipeline | None = None) -> Plan:
    """What the next run would do, from code and ledger; never touches a target."""
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    return plan_build(
        pipeline=pipeline,
        states=change_states(),
        environment=current_environment(),
        strategies=strategies_for(pipeline, target_systems()),
        out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
        approval_needed=approval_hook(),
    )


class ExitCode(IntEnum):
    """The command line's exit codes, which the deploy gate also reports through the API."""

    OK = 0
    FAILED = 1
    USAGE = 2
    BLOCKED = 3
    AWAITING_APPROVAL = 4
    LOCKED = 5
    INTEGRITY = 6
    PENDING = 7


#: Where each next action puts a change at the deploy gate; an action not named here stops nothing.
GATE = {
    Action.MANUAL_INTERVENTION: "blocked",
    Action.OUT_OF_ORDER: "blocked",
    Action.BLOCKED: "blocked",
    Action.AWAITING_APPROVAL: "awaiting_approval",
    Action.APPLY: "pending",
    Action.RECONCILE: "pending",
}


@dataclass
class Validation:
    """The deploy gate's verdict: the plan, the open drift findings, each change's class and the
    exit code with its reason."""

    plan: Plan
    findings: list[Finding]
    checksum_drift: list[str] = field(default_factory=list)
    missing_from_code: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    awaiting_approval: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.OK
    exit_reason: str = ""

    @property
    def valid(self) -> bool:
        return self.exit_code == ExitCode.OK

    @property
    def exit_name(self) -> str:
        return self.exit_code.name

    @property
    def classification(self) -> dict[str, str]:
        """Each change that stops the gate, by id: ``checksum_drift``, ``missing_from_code``,
        ``blocked``, ``awaiting_approval`` or ``pending``."""
        classes = {}
        for name in ("pending", "awaiting_approval", "blocked", "missing_from_code", "checksum_drift"):
            classes.update(dict.fromkeys(getattr(self, name), name))
        return classes

    def as_dict(self) -> dict[str, Any]:
        return validation_data(self)


def pipeline_validate(*, findings: Callable[[], Iterable[Finding]], pipeline: Pipeline | None = None, targets: set[str] | None = None) -> Validation:
    """The deploy gate: what is drifted, blocked, awaiting approval or pending, and the exit code
    by precedence (6 drift, 3 blocked, 4 awaiting approval, 7 pending, else 0).

    ``findings`` gives the open drift findings once the plan is known to be valid (the caller may
    refresh them first); ``targets`` limits everything to the target systems a reader sees
    (``None``: all of them). An invalid pipeline raises :class:`PipelineInvalid` (exit 2).
    """
    plan = pipeline_plan(pipeline=pipeline)
    items = [item for item in plan.items if targets is None or item.change.target in targets]
    verdict = Validation(plan=plan, findings=list(findings()))
    verdict.checksum_drift = [i.change.id for i in items if i.recorded_checksum and i.recorded_checksum != i.change.checksum]
    verdict.missing_from_code = [row.change_id for row in plan.missing if targets is None or row.target in targets]
    for item in items:
        if item.action in GATE:
            getattr(verdict, GATE[item.action]).append(item.change.id)
    drift = []
    if verdict.checksum_drift:
        drift.append(f"checksum drift: {', '.join(verdict.checksum_drift)}")
    if verdict.missing_from_code:
        drift.append(f"missing from code: {', '.join(verdict.missing_from_code)}")
    if verdict.findings:
        drift.append(f"{len(verdict.findings)} open drift finding(s)")
    if drift:
        verdict.exit_code, verdict.exit_reason = ExitCode.INTEGRITY, "; ".join(drift)
    elif verdict.blocked:
        verdict.exit_code, verdict.exit_reason = ExitCode.BLOCKED, f"blocked: {', '.join(verdict.blocked)}"
    elif verdict.awaiting_approval:
        verdict.exit_code, verdict.exit_reason = ExitCode.AWAITING_APPROVAL, f"awaiting approval: {', '.join(verdict.awaiting_approval)}"
    elif verdict.pending:
        verdict.exit_code, verdict.exit_reason = ExitCode.PENDING, f"pending: {', '.join(verdict.pending)}"
    else:
        verdict.exit_reason = "everything is applied and nothing drifted"
    return verdict
