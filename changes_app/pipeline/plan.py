"""What the next run does with each change (docs/semantics.md §4). Pure: reads no database, touches no target."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from changes_app.definitions import ChangeDefinition, Recovery, Strategy
from changes_app.pipeline import django_migrations
from changes_app.pipeline.discovery import Pipeline


class Action(StrEnum):
    APPLY = "APPLY"
    SKIP = "SKIP"
    RECONCILE = "RECONCILE"
    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    BLOCKED = "BLOCKED"
    OUT_OF_ORDER = "OUT_OF_ORDER"
    NOT_APPLICABLE = "NOT_APPLICABLE"


#: Actions that mean "this run would do something to the target".
PENDING = frozenset({Action.APPLY, Action.RECONCILE})
#: Actions that hold their whole stage until a human acts (docs/semantics.md §4).
HOLDING = frozenset({Action.MANUAL_INTERVENTION, Action.OUT_OF_ORDER})


@dataclass
class PlanItem:
    change: ChangeDefinition
    strategy: Strategy
    state: ChangeState | None
    action: Action
    reason: str = ""
    #: For checksum drift: the checksum recorded in the ledger.
    recorded_checksum: str = ""
    #: The latest entry the decision is based on; a writer refuses if the change moved since.
    entry_id: int | None = field(init=False)
    #: Apply generation, keying the marker row of a separate database.
    generation: int = field(init=False)
    #: For RECONCILE: why the last run could not settle it (the probe found no effect, the target was
    #: unreachable), while the change has not moved since; "" when no run tried.
    unsettled: str = field(default="", init=False)

    def __post_init__(self):
        self.entry_id = self.state.entry_id if self.state else None
        self.generation = self.state.applied_count if self.state else 0

    @property
    def latest_state(self) -> str:
        return self.state.state if self.state else ""

    @property
    def needs_human(self) -> bool:
        """An issue: its stage is held until a person acts, or the last run could not reconcile it."""
        return self.action in HOLDING or (self.action == Action.RECONCILE and bool(self.unsettled))

    def as_dict(self) -> dict[str, Any]:
        change = self.change
        return {
            "stage": change.stage,
            "order": change.order,
            "id": change.id,
            "target": change.target,
            "strategy": self.strategy.value,
            "latest_state": self.latest_state or None,
            "next_action": self.action.value,
            "reason": self.reason,
            "checksum": change.checksum,
            "recorded_checksum": self.recorded_checksum or (self.state.checksum if self.state else None),
        }


@dataclass
class StagePlan:
    name: str
    items: list[PlanItem] = field(default_factory=list)
    blocked_by: PlanItem | None = None

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None


@dataclass
class Plan:
    environment: str
    digest: str
    stages: list[StagePlan]
    #: Applied changes whose code disappeared (definition drift).
    missing: list[ChangeState] = field(default_factory=list)
    #: The pipeline's notices (stages left out because their target system is disabled).
    notices: list[str] = field(default_factory=list)
    #: ``change_plan`` only: every recorded state and checksum by change id, as it read them.
    recorded: dict[str, tuple[str, str]] | None = field(default=None, repr=False)

    @property
    def items(self) -> list[PlanItem]:
        return [item for stage in self.stages for item in stage.items]

    def item(self, change_id: str) -> PlanItem | None:
        return next((item for item in self.items if item.change.id == change_id), None)

    @property
    def issues(self) -> list[PlanItem]:
        """Every change that needs a human: the one list the admin, the API and the CLI show."""
        return [item for item in self.items if item.needs_human]

    def count(self, *actions: Action) -> int:
        return sum(1 for item in self.items if item.action in actions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "pipeline_digest": self.digest,
            "changes": [item.as_dict() for item in self.items],
            "missing_from_code": [{"id": row.change_id, "stage": row.stage, "state": row.state} for row in self.missing],
            "summary": {action.value: self.count(action) for action in Action if self.count(action)},
            "notices": self.notices,
        }


def resolve(change: ChangeDefinition, strategy: Strategy, state: ChangeState | None) -> tuple[Action, str]:
    """One change's next action from its latest state, ignoring its stage."""
    retry = change.recovery == Recovery.ALWAYS_RETRY
    transactional = strategy != Strategy.NON_TRANSACTIONAL
    if state is None:
        return Action.APPLY, "never applied"
    latest = state.state
    if latest in APPLIED_STATES and state.checksum and state.checksum != change.checksum:
        return Action.MANUAL_INTERVENTION, (
            f"checksum drift: the change was edited after it was applied (recorded {state.checksum[:12]}, "
            f"code {change.checksum[:12]}); revert the edit or accept the new checksum"
        )
    if latest in APPLIED_STATES or latest == S.SKIPPED:
        return Action.SKIP, "skipped by an operator" if latest == S.SKIPPED else "already applied"
    if latest == S.STARTED:
        if strategy == Strategy.MARKER:
            return Action.RECONCILE, "started; the marker in the target decides whether it committed"
        if strategy == Strategy.SHARED_TRANSACTION:
            return Action.MANUAL_INTERVENTION, "started outside a shared transaction: its outcome is unknown"
        if retry:
            return Action.APPLY, "started but not finished; ALWAYS_RETRY applies it again"
        if change.has_verify:
            return Action.RECONCILE, "started but not finished; its verify probe decides whether the effect is present"
        return Action.MANUAL_INTERVENTION, "started but not finished: the target may be partly changed"
    if latest == S.FAILED:
        if transactional:
            return Action.APPLY, "failed and rolled back natively: nothing was committed"
        if retry:
            return Action.APPLY, "failed; ALWAYS_RETRY applies it again"
        return Action.MANUAL_INTERVENTION, "failed without compensation: the target may be partly changed"
    if latest in (S.ROLLED_BACK, S.MANUAL_MARKED_AS_ROLLED_BACK):
        return Action.APPLY, "rolled back"
    if latest in (S.ROLLBACK_STARTED, S.ROLLBACK_FAILED):
        return Action.MANUAL_INTERVENTION, "its rollback did not complete: the target may be partly changed"
    return Action.MANUAL_INTERVENTION, f"unknown state {latest!r}"


def plan_build(
    *,
    pipeline: Pipeline,
    states: Mapping[str, ChangeState],
    environment: str,
    strategies: Mapping[str, Strategy],
    out_of_order: str = "block",
    approval_needed: Callable[[ChangeDefinition], str] | None = None,
    adopted: Callable[[str], bool] | None = None,
) -> Plan:
    """Resolve every change of the pipeline.

    ``strategies`` maps change ids to their execution strategy; ``approval_needed`` returns why a
    pending change cannot run without an approval ("" when it can); ``adopted`` says whether a
    database alias's Django migrations may run (default: it reads the adoption, the one read this
    function makes, and only when a Django stage is in the pipeline).
    """
    stages = []
    for stage in pipeline.stages:
        stage_plan = StagePlan(name=stage.name)
        applied_orders = [change.order for change in stage.changes if change.id in states and states[change.id].state in APPLIED_STATES]
        newest_applied = max(applied_orders, default="")
        alias = django_migrations.stage_alias(stage.name)
        if alias is not None:  # the migration graph decides what is out of order, not the file order
            stages.append(_django_stage(stage, states, environment, strategies, out_of_order, approval_needed, adopted))
            continue
        for change in stage.changes:
            state = states.get(change.id)
            strategy = strategies[change.id]
            if not change.applies_in(environment):
                item = PlanItem(change, strategy, state, Action.NOT_APPLICABLE, f"runs only in {', '.join(change.environments or [])}")
            else:
                action, reason = resolve(change, strategy, state)
                item = PlanItem(change, strategy, state, action, reason)
                if state is not None and state.state in APPLIED_STATES:
                    item.recorded_checksum = state.checksum
                if state is None and change.order < newest_applied:
                    reason = f"ordered before the applied change at {newest_applied}"
                    if out_of_order == "allow":
                        item.reason = f"{reason}; allowed by FLAMINGOCK_OUT_OF_ORDER"
                    else:
                        item.action, item.reason = Action.OUT_OF_ORDER, reason
            stage_plan.items.append(item)
        _hold_stage(stage_plan, approval_needed)
        stages.append(stage_plan)
    # A left-out stage's changes are still in code: they are not missing.
    known = {*pipeline.by_id, *(change.id for stage in pipeline.left_out for change in stage.changes)}
    missing = [row for change_id, row in sorted(states.items()) if change_id not in known and row.state in APPLIED_STATES]
    return Plan(environment=environment, digest=pipeline.digest, stages=stages, missing=missing, notices=list(pipeline.notices))


#: The reason of a Django migration held until its database is adopted (docs/django-migrations.md).
NOT_ADOPTED = "not_adopted"


def _django_stage(stage, states, environment, strategies, out_of_order, approval_needed, adopted) -> StagePlan:
    """A database alias's governed migrations: out of order means new while an applied migration
    depends on it; nothing runs until a database with recorder rows is adopted."""
    alias = django_migrations.stage_alias(stage.name)
    stage_plan = StagePlan(name=stage.name)
    applied = {change_id for change_id, state in states.items() if state.state in APPLIED_STATES}
    # Only applied changes can make a new one out of order (nothing applied: nothing to look through).
    applied_changes = [other for other in stage.changes if other.id in applied]
    for change in stage.changes:
        state = states.get(change.id)
        strategy = strategies[change.id]
        action, reason = resolve(change, strategy, state)
        item = PlanItem(change, strategy, state, action, reason)
        if state is not None and state.state in APPLIED_STATES:
            item.recorded_checksum = state.checksum
        if state is None:
            dependants = [other.id for other in applied_changes if change.id in getattr(other, "ancestors", ())]
            if dependants:
                why = f"new, but the applied {dependants[0]} depends on it"
                if out_of_order == "allow":
                    item.reason = f"{why}; allowed by FLAMINGOCK_OUT_OF_ORDER"
                else:
                    item.action, item.reason = Action.OUT_OF_ORDER, why
        if item.action == Action.MANUAL_INTERVENTION and change.migration is not None:
            migration = change.migration
            item.reason += (
                f"; see what it runs with `python manage.py sqlmigrate {migration.app_label} {migration.name} --database {alias}`,"
                f" compare with the database, then record the outcome with `flamingock fix {change.id} --resolution applied|rolled-back`"
            )
        stage_plan.items.append(item)
    is_adopted = adopted(alias) if adopted is not None else not django_migrations.adoption_required(alias, known=states.keys())
    if not is_adopted:
        for item in stage_plan.items:
            if item.action in PENDING:
                item.action = Action.BLOCKED
                item.reason = (
                    f"{NOT_ADOPTED}: database {alias!r} has Django migrations applied outside governance; adopt it first (flamingock adopt django)"
                )
        return stage_plan
    _hold_stage(stage_plan, approval_needed)
    return stage_plan


def _hold_stage(stage: StagePlan, approval_needed) -> None:
    """A change needing a human blocks its whole stage; a change awaiting approval holds the rest."""
    blocker = next((item for item in stage.items if item.action in HOLDING), None)
    if blocker is not None:
        stage.blocked_by = blocker
        for item in stage.items:
            if item is not blocker and item.action in (*PENDING, Action.OUT_OF_ORDER, Action.MANUAL_INTERVENTION):
                if item.action in PENDING:
                    item.action, item.reason = Action.BLOCKED, f"stage {stage.name!r} is held by {blocker.change.id}"
        return
    if approval_needed is None:
        return
    waiting: PlanItem | None = None
    for item in stage.items:
        if item.action != Action.APPLY:
            continue
        if waiting is not None:
            item.action, item.reason = Action.BLOCKED, f"waits for {waiting.change.id}, which awaits approval"
            continue
        why = approval_needed(item.change)
        if why:
            item.action, item.reason = Action.AWAITING_APPROVAL, why
            waiting = item
