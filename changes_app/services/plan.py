"""What the next run would do: the plan, from code and ledger, never touching a target; and the
deploy gate that says whether anything is drifted, blocked, awaiting approval or pending."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from django.conf import settings

from audit_app.models import APPLIED_STATES, ChangeState, ChangeStateName
from audit_app.services import change_states
from changes_app.conf import current_environment
from changes_app.definitions import ChangeDefinition
from changes_app.engine.executor import UNSETTLED_PREFIXES, Result, strategies_for
from changes_app.errors import PipelineInvalid
from changes_app.governance.policy import approval_gate
from changes_app.models import Finding, Run
from changes_app.pipeline.discovery import Pipeline, Stage, pipeline_load
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
    plan = plan_build(
        pipeline=pipeline,
        states=change_states(),
        environment=current_environment(),
        strategies=strategies_for(pipeline, target_systems()),
        out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
        approval_needed=approval_hook(),
    )
    reconcile_outcomes_mark(plan)
    return plan


def change_plan(change_id: str, *, pipeline: Pipeline | None = None) -> Plan:
    """The plan as it stands for one change (its page), without resolving the whole pipeline.

    ``plan_build`` runs on the change's stage minus the changes that cannot move its item: a change
    whose state is applied with the code's checksum (or skipped) resolves to SKIP, neither holds its
    stage nor waits for approval, and counts only through the newest applied order, which stays in.
    So ``plan.item(change_id)``, its action, reason and state, and whether it is an issue, are those
    of :func:`pipeline_plan`; the other items are not all there. Reads the states' three columns
    once, then the full rows of what stays (issue 18: the change page at 10,000 changes)."""
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    change = pipeline.by_id.get(change_id)
    stage = next((stage for stage in pipeline.stages if change is not None and stage.name == change.stage), None)
    if stage is None:
        return Plan(environment=current_environment(), digest=pipeline.digest, stages=[], notices=list(pipeline.notices))
    recorded = {key: (state, checksum) for key, state, checksum in ChangeState.objects.values_list("change_id", "state", "checksum")}
    applied, skipped = frozenset(map(str, APPLIED_STATES)), str(ChangeStateName.SKIPPED)
    kept, newest = [], None  # positions in the stage of what stays; the newest applied change
    for position, other in enumerate(stage.changes):
        row = recorded.get(other.id)
        if row is None or other is change:
            kept.append(position)
        if row is None:
            continue
        if row[0] in applied:
            if newest is None or other.order > stage.changes[newest].order:
                newest = position
            if row[1] and row[1] != other.checksum:
                kept.append(position)
        elif row[0] != skipped:
            kept.append(position)
    kept = {*kept, *([newest] if newest is not None else [])}
    changes = [stage.changes[position] for position in sorted(kept)]
    part = Pipeline(stages=[Stage(name=stage.name, package=stage.package, changes=changes)], problems=[])
    states = {row.change_id: row for row in ChangeState.objects.filter(change_id__in=[other.id for other in changes if other.id in recorded])}
    plan = plan_build(
        pipeline=part,
        states=states,
        environment=current_environment(),
        strategies=strategies_for(part, target_systems()),
        out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
        approval_needed=approval_hook(),
    )
    reconcile_outcomes_mark(plan)
    plan.digest, plan.notices, plan.missing, plan.recorded = pipeline.digest, list(pipeline.notices), [], recorded
    return plan


def reconcile_outcomes_mark(plan: Plan) -> None:
    """Mark each RECONCILE that the newest run to try it could not settle (``PlanItem.unsettled``).

    The plan never touches a target, so a verify probe that found no effect, or a target that could
    not be reached, is known only from the run that tried: its BLOCKED result, after the change's
    latest entry, makes the change an issue until it moves (a fix, or a later run that settles it).
    """
    waiting = {item.change.id: item for item in plan.items if item.action == Action.RECONCILE and item.state is not None}
    if not waiting:
        return
    since = min(item.state.updated_at for item in waiting.values())
    runs = (
        Run.objects.filter(environment=plan.environment, started_at__gte=since, finished_at__isnull=False)
        .order_by("-started_at")
        .values_list("started_at", "results")
    )
    for started_at, results in runs.iterator():
        for row in results:
            item = waiting.get(row.get("change_id"))
            if item is None or row.get("action") != Action.RECONCILE or started_at < item.state.updated_at:
                continue
            del waiting[item.change.id]  # the newest attempt decides
            reason = row.get("reason") or ""
            if row.get("result") == Result.BLOCKED and reason.startswith(UNSETTLED_PREFIXES):
                item.unsettled = reason
        if not waiting:
            return


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
