"""The engine: executes a claimed run under the pipeline lock, one strategy per change (docs/semantics.md §5).

Plain Python that the CLI, the admin, the API and Celery all reach through ``services``. Every
state entry of a run is fenced by the lease; every crash leaves the ledger telling the truth or
naming the uncertainty (STARTED, ROLLBACK_STARTED), never a silent double apply.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.utils import timezone

from audit_app.models import APPLIED_STATES, STATE_EVENTS, AuditEntry
from audit_app.models import ChangeStateName as S
from audit_app.services import Actor, ChangeRef, FenceRefused, HashMismatch, StateMoved, audit_record, change_states
from changes_app.definitions import ChangeDefinition, Strategy
from changes_app.engine.faults import crashpoint
from changes_app.governance.permissions import OPERATE, actor_may
from changes_app.locks.base import Holder, Lease, LockBackend, RunCancelled
from changes_app.models import Run
from changes_app.pipeline import django_migrations
from changes_app.pipeline.discovery import Pipeline
from changes_app.pipeline.plan import PENDING, Action, Plan, PlanItem, plan_build
from changes_app.targets.base import MarkerConflict, TargetSystem, TargetUnavailable, audit_alias, target_systems

logger = logging.getLogger("flamingock.engine")
MAX_TRACE = 16_000
PROGRESS_INTERVAL = 0.25  # seconds between progress commits


#: The idle-transaction limit each live database connection already has.
_IDLE_LIMIT_SET: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Result:
    """Per-change outcomes of a run, beside the plan's actions."""

    APPLIED = "APPLIED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    NOT_REACHED = "NOT_REACHED"
    ALREADY_APPLIED = "ALREADY_APPLIED"
    RECONCILED = "RECONCILED"
    BLOCKED = "BLOCKED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    NOT_APPLICABLE = "NOT_APPLICABLE"
    SKIPPED = "SKIPPED"
    ABORTED = "ABORTED"
    NOT_PERMITTED = "NOT_PERMITTED"


#: How a run's BLOCKED result says that reconciliation itself could not settle the change (the
#: issues list reads it), as opposed to a change merely waiting behind another.
UNSETTLED_PREFIXES = ("cannot reconcile: ", "needs a human: ")


@dataclass
class ChangeResult:
    change_id: str
    stage: str
    order: str
    action: str
    result: str
    reason: str = ""
    duration_ms: float | None = None
    error: str = ""
    entry_ids: list[int] = field(default_factory=list)


class RunAborted(Exception):
    """The run must stop before its next change (lock lost, cancelled)."""


class ChangeContext:
    """Handed to changes as the ``context`` dependency."""

    def __init__(self, *, run: Run, change: ChangeDefinition, environment: str):
        self.run_id = run.id
        self.change_id = change.id
        self.environment = environment
        self.idempotency_key = f"{change.id}:{run.id}"

    @functools.cached_property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"flamingock.change.{self.change_id}")


def format_error(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return text if len(text) <= MAX_TRACE else text[: MAX_TRACE // 2] + "\n...\n" + text[-MAX_TRACE // 2 :]


def strategies_for(pipeline: Pipeline, targets: dict[str, TargetSystem]) -> dict[str, Strategy]:
    targets = {**django_migrations.targets(), **targets}  # governed Django migrations run on their alias
    return {change.id: targets[change.target].strategy(transactional=change.transactional) for stage in pipeline.stages for change in stage.changes}


def pipeline_without_groups(pipeline: Pipeline) -> Pipeline:
    """The pipeline without the changes aimed at a target group: those run once per member, in
    fleet runs (changes_app.fleets, docs/fleet.md), never on the group's own connection."""
    groups = {name for name, config in settings.FLAMINGOCK_TARGET_SYSTEMS.items() if config.get("group")}
    if not groups:
        return pipeline
    return replace(pipeline, stages=[replace(stage, changes=[c for c in stage.changes if c.target not in groups]) for stage in pipeline.stages])


class Executor:
    """Executes one run that this process has claimed."""

    def __init__(
        self, run: Run, *, pipeline: Pipeline, lock: LockBackend, actor: Actor, approval_needed: Callable[[ChangeDefinition], str] | None = None
    ):
        self.run = run
        self.pipeline = self.pipeline_for(pipeline)
        self.lock = lock
        self.actor = actor
        self.approval_needed = approval_needed
        self.environment = run.environment
        self.targets = {**django_migrations.targets(), **target_systems()}  # one per run: carries the ProjectState
        self.strategies = strategies_for(self.pipeline, self.targets)
        self.alias = audit_alias()
        self.lease: Lease | None = None
        self.results: list[ChangeResult] = []
        self._permitted: dict[str, bool] = {}
        self._last_progress = 0.0
        self._total_written = True  # until execute_pipeline has a plan to count

    def pipeline_for(self, pipeline: Pipeline) -> Pipeline:
        """The changes this executor runs: a single target's (a fleet member's executor keeps its group's)."""
        return pipeline_without_groups(pipeline)

    # -- lock ------------------------------------------------------------------------------

    def acquire(self) -> Holder | None:
        """Take the lock within the configured wait; returns the holder if it could not."""
        wait = settings.FLAMINGOCK_LOCK.get("wait_seconds", 10.0)
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            self.lease = self.lock.try_acquire(run_id=self.run.id, actor=self.actor)
            if self.lease is not None:
                break
            if time.monotonic() >= deadline:
                holder = self.lock.holder()
                if holder is not None:
                    return holder
                continue  # released between the attempt and the look: ``None`` would mean "acquired"
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.25)
        self.lease.start_heartbeat()
        try:
            self._limit_idle_transactions()
            # One commit: the run's token and its lock.acquired entry.
            with transaction.atomic(using=self.alias):
                Run.objects.filter(pk=self.run.pk).update(fencing_token=self.lease.token, heartbeat_at=timezone.now())
                # The block's last statement: on PostgreSQL the entry goes with the COMMIT, one round trip.
                self.audit("lock.acquired", details={"lock": self.lock.name, "token": self.lease.token}, before_commit=lambda: None)
        except BaseException:
            # Not recorded as held (or the audit store is gone), so not held: a heartbeat left beating
            # in a worker that lives on would keep every later run locked out.
            self.lease.release()
            self.lease = None
            raise
        self.run.fencing_token = self.lease.token  # as committed
        crashpoint("after_lock")
        return None

    def _limit_idle_transactions(self) -> None:
        # A paused holder must not block a takeover: PostgreSQL ends its idle transaction first.
        # A session setting: sent once per connection (workers keep theirs between runs).
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            milliseconds = int(self.lock.lease_seconds * 1000 / 2)
            connection.ensure_connection()
            if _IDLE_LIMIT_SET.get(connection.connection) == milliseconds:
                return
            with connection.cursor() as cursor:
                cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
            _IDLE_LIMIT_SET[connection.connection] = milliseconds

    def release(self) -> None:
        if self.lease is None:
            return
        crashpoint("before_release")
        released = self.lease.release()
        if not released or self.lease.lost:
            self.audit("lock.lost", details={"lock": self.lock.name, "token": self.lease.token, "reason": self.lease.lost_reason})
        else:
            self.audit("lock.released", details={"lock": self.lock.name, "token": self.lease.token})

    # -- audit helpers -----------------------------------------------------------------------

    def audit(self, event: str, **kwargs) -> Any:
        change = kwargs.get("change")
        # A change's entries record the approval behind them: the request a single-change run
        # executes, or the APPLY request the approval hook let the change through with.
        approval = self.run.parameters.get("approval") or (getattr(self.approval_needed, "evidence", {}).get(change.id) if change else None)
        if change is not None and approval:
            kwargs["details"] = {**(kwargs.get("details") or {}), "approval": approval}
        return audit_record(event=event, actor=self.actor, environment=self.environment, run_id=self.run.id, **kwargs)

    def ref(self, item: PlanItem, checksum: str | None = None) -> ChangeRef:
        change = item.change
        return ChangeRef(
            id=change.id,
            stage=change.stage,
            order=change.order,
            target=change.target,
            checksum=checksum if checksum is not None else change.checksum,
            transaction_strategy=item.strategy.value,
            recovery_strategy=change.recovery.value,
        )

    def state_entry(self, item: PlanItem, state: str, *, expected: int | None, **kwargs):
        """A fenced state entry of ``item``, based on its latest entry ``expected``."""
        entry = self.audit(
            STATE_EVENTS[state],
            state=state,
            change=kwargs.pop("change_ref", None) or self.ref(item),
            fence=self.lease,
            expected_entry_id=expected,
            **kwargs,
        )
        return entry

    # -- progress and stopping ----------------------------------------------------------------

    def progress(self, *, current: str = "", force: bool = False) -> None:
        """Commit progress a few times a second at most. A cancellation is noticed here when
        progress is due, and always by the fence check of the next change's first entry, which
        refuses to write for a cancelled run: a cancelled run stops before its next change."""
        now = time.monotonic()
        first = not self._total_written
        if not first and not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        done = sum(
            1
            for result in self.results
            if result.result in (Result.APPLIED, Result.FAILED, Result.ROLLED_BACK, Result.RECONCILED, Result.ALREADY_APPLIED)
        )
        fields = {"progress_done": done, "current_change": current, "heartbeat_at": timezone.now()}
        if first:  # before the first change, its fence check refuses a cancelled run anyway
            fields["progress_total"] = self.run.progress_total
            self._total_written = True
            Run.objects.filter(pk=self.run.pk).update(**fields)
            return
        # One statement, not a read and then a write: progress is written only while no cancellation
        # is requested, and when it is not written, the run says who cancelled it.
        if not Run.objects.filter(pk=self.run.pk, cancel_requested_at=None).update(**fields):
            cancelled = Run.objects.filter(pk=self.run.pk).values_list("cancel_requested_by", flat=True).first()
            if cancelled:
                raise RunAborted(f"cancelled by {cancelled}")

    def check_lease(self) -> None:
        if self.lease is not None and self.lease.lost:
            raise RunAborted(f"lock lost: {self.lease.lost_reason}")

    def permitted(self, target: str) -> bool:
        if target not in self._permitted:
            self._permitted[target] = actor_may(self.actor, OPERATE, target)
        return self._permitted[target]

    # -- the pipeline ---------------------------------------------------------------------------

    def plan(self) -> Plan:
        return plan_build(
            pipeline=self.pipeline,
            states=change_states(),
            environment=self.environment,
            strategies=self.strategies,
            out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
            approval_needed=self.approval_needed,
        )

    def execute_pipeline(self) -> tuple[str, str]:
        """Run every stage; returns the run's (status, reason)."""
        plan = self.plan()  # read again now that the lock is held
        self.run.progress_total = plan.count(*PENDING)
        self._total_written = False
        try:
            for stage in plan.stages:
                self.execute_stage(stage)
        except RunAborted as aborted:
            self.not_reached(plan, str(aborted))
            return Run.Status.ABORTED, str(aborted)
        except Exception as error:
            self.not_reached(plan, f"stopped by an unexpected error: {type(error).__name__}")
            raise
        finally:
            if not self._total_written:  # no change reached the stage loop's progress update
                Run.objects.filter(pk=self.run.pk).update(progress_total=self.run.progress_total)
                self._total_written = True
        return self.outcome()

    def not_reached(self, plan: Plan, reason: str) -> None:
        recorded = {result.change_id for result in self.results}
        self.results.extend(self.result(item, Result.NOT_REACHED, reason) for item in plan.items if item.change.id not in recorded)

    def outcome(self) -> tuple[str, str]:
        outcomes = {result.result for result in self.results}
        if outcomes & {Result.FAILED, Result.ROLLED_BACK}:
            failed = [r.change_id for r in self.results if r.result in (Result.FAILED, Result.ROLLED_BACK)]
            return Run.Status.FAILED, f"failed: {', '.join(failed)}"
        # Changes merely waiting behind another (plan action BLOCKED) do not make the run blocked.
        blocked = [r.change_id for r in self.results if r.result in (Result.BLOCKED, Result.NOT_PERMITTED) and r.action != Action.BLOCKED]
        if blocked:
            return Run.Status.BLOCKED, f"blocked: {', '.join(blocked)}"
        if Result.AWAITING_APPROVAL in outcomes:
            waiting = [r.change_id for r in self.results if r.result == Result.AWAITING_APPROVAL]
            return Run.Status.AWAITING_APPROVAL, f"awaiting approval: {', '.join(waiting)}"
        if outcomes & {Result.APPLIED, Result.RECONCILED}:
            return Run.Status.SUCCEEDED, ""
        return Run.Status.NO_CHANGES, ""

    def result(self, item: PlanItem, result: str, reason: str = "", **kwargs) -> ChangeResult:
        change = item.change
        return ChangeResult(change.id, change.stage, change.order, item.action.value, result, reason or item.reason, **kwargs)

    def execute_stage(self, stage) -> None:
        if stage.blocked:
            for item in stage.items:
                outcome = {
                    Action.MANUAL_INTERVENTION: Result.BLOCKED,
                    Action.OUT_OF_ORDER: Result.BLOCKED,
                    Action.BLOCKED: Result.BLOCKED,
                    Action.NOT_APPLICABLE: Result.NOT_APPLICABLE,
                }.get(item.action, Result.ALREADY_APPLIED if item.latest_state in APPLIED_STATES else Result.SKIPPED)
                self.results.append(self.result(item, outcome))
            return
        # Reconcile first: a stage whose uncertainty cannot be settled runs nothing.
        for item in stage.items:
            if item.action == Action.RECONCILE:
                self.check_lease()
                if not self.reconcile(item):
                    self.block_rest(stage, item)
                    return
        settled = {result.change_id for result in self.results}
        stopped_by = None
        for item in stage.items:
            if item.change.id in settled:
                continue
            if stopped_by is not None:
                reason = f"stage stopped at {stopped_by}"
                self.results.append(self.result(item, Result.NOT_REACHED, reason) if item.action in PENDING else self.passive(item))
                continue
            if item.action == Action.AWAITING_APPROVAL:
                self.results.append(self.result(item, Result.AWAITING_APPROVAL))
                stopped_by = item.change.id
                continue
            if item.action != Action.APPLY:
                self.results.append(self.passive(item))
                continue
            self.check_lease()
            self.progress(current=item.change.id)
            if not self.permitted(item.change.target):
                reason = f"{self.actor.name} may not operate target system {item.change.target!r}"
                self.results.append(self.result(item, Result.NOT_PERMITTED, reason))
                stopped_by = item.change.id
                continue
            result = self.apply(item)
            self.results.append(result)
            if result.result in (Result.FAILED, Result.ROLLED_BACK):
                stopped_by = item.change.id
            elif result.result == Result.ABORTED:
                raise RunAborted(result.reason)

    def passive(self, item: PlanItem) -> ChangeResult:
        outcome = {
            Action.SKIP: Result.ALREADY_APPLIED if item.latest_state in APPLIED_STATES else Result.SKIPPED,
            Action.NOT_APPLICABLE: Result.NOT_APPLICABLE,
            Action.BLOCKED: Result.BLOCKED,
            Action.AWAITING_APPROVAL: Result.AWAITING_APPROVAL,
        }.get(item.action, Result.NOT_REACHED)
        return self.result(item, outcome)

    def block_rest(self, stage, blocker: PlanItem) -> None:
        for item in stage.items:
            if item is blocker or any(r.change_id == item.change.id for r in self.results):
                continue
            reason = f"stage {stage.name!r} is held by {blocker.change.id}"
            self.results.append(self.result(item, Result.BLOCKED, reason) if item.action in PENDING else self.passive(item))

    # -- strategies -----------------------------------------------------------------------------

    def apply(self, item: PlanItem) -> ChangeResult:
        started = time.perf_counter()
        strategy = {
            Strategy.SHARED_TRANSACTION: self.apply_shared,
            Strategy.MARKER: self.apply_marker,
            Strategy.NON_TRANSACTIONAL: self.apply_non_transactional,
        }[item.strategy]
        self.lease.cancel_check = True
        try:
            result = strategy(item, started)
        except RunCancelled as cancelled:
            raise RunAborted(str(cancelled)) from cancelled
        except FenceRefused as refused:
            return self.result(item, Result.ABORTED, f"lock lost: {refused}")
        except StateMoved as moved:
            return self.result(item, Result.ALREADY_APPLIED, f"another holder moved it meanwhile: {moved}")
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    def dependencies(self, item: PlanItem, session: dict[str, Any]) -> dict[str, Any]:
        return {**session, "context": ChangeContext(run=self.run, change=item.change, environment=self.environment)}

    def elapsed(self, started: float) -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    def apply_shared(self, item: PlanItem, started: float) -> ChangeResult:
        change, target = item.change, self.targets[item.change.target]
        try:
            with target.session(atomic=True) as session:
                dependencies = self.dependencies(item, session)
                crashpoint("before_apply", change.id)
                for step in change.steps:
                    step.apply(dependencies)
                crashpoint("after_apply", change.id)
                # The fence check, the state re-read and the entry are the transaction's last statements;
                # on PostgreSQL the entry and COMMIT go together (audit_record, before_commit).
                entry = self.state_entry(
                    item,
                    S.APPLIED,
                    expected=item.entry_id,
                    duration_ms=self.elapsed(started),
                    before_commit=lambda: crashpoint("before_commit", change.id),
                )
        except (FenceRefused, StateMoved, HashMismatch):
            raise  # a refusal, or an entry the database hashed otherwise (committed or not, it says): the run stops
        except Exception as error:
            failed = self.state_entry(
                item,
                S.FAILED,
                expected=item.entry_id,
                error=format_error(error),
                duration_ms=self.elapsed(started),
                details={"rolled_back_natively": True},
            )
            return self.result(item, Result.FAILED, "apply raised; the transaction was rolled back", error=str(error), entry_ids=[failed.pk])
        crashpoint("after_applied", change.id)
        return self.result(item, Result.APPLIED, entry_ids=[entry.pk])

    def apply_marker(self, item: PlanItem, started: float) -> ChangeResult:
        change, target = item.change, self.targets[item.change.target]
        generation = item.generation
        start = self.state_entry(item, S.STARTED, expected=item.entry_id, details={"generation": generation})
        crashpoint("after_started", change.id)
        try:
            with target.session(atomic=True) as session:
                # The marker goes first: a second apply of this generation fails before any effect.
                target.marker_insert(session, change_id=change.id, generation=generation, run_id=str(self.run.id), token=self.lease.token)
                dependencies = self.dependencies(item, session)
                crashpoint("before_apply", change.id)
                for step in change.steps:
                    step.apply(dependencies)
                crashpoint("after_apply", change.id)
            crashpoint("after_target_commit", change.id)
        except MarkerConflict as conflict:
            entry = self.state_entry(
                item,
                S.APPLIED,
                expected=start.pk,
                duration_ms=self.elapsed(started),
                details={"generation": generation, "reconciled": True, "evidence": f"marker already present: {conflict}"},
            )
            return self.result(
                item, Result.ALREADY_APPLIED, "another apply of this generation already committed in the target", entry_ids=[start.pk, entry.pk]
            )
        except Exception as error:
            failed = self.state_entry(
                item,
                S.FAILED,
                expected=start.pk,
                error=format_error(error),
                duration_ms=self.elapsed(started),
                details={"generation": generation, "rolled_back_natively": True},
            )
            return self.result(
                item, Result.FAILED, "apply raised; the target transaction was rolled back", error=str(error), entry_ids=[start.pk, failed.pk]
            )
        entry = self.state_entry(item, S.APPLIED, expected=start.pk, duration_ms=self.elapsed(started), details={"generation": generation})
        crashpoint("after_applied", change.id)
        return self.result(item, Result.APPLIED, entry_ids=[start.pk, entry.pk])

    def apply_non_transactional(self, item: PlanItem, started: float) -> ChangeResult:
        change, target = item.change, self.targets[item.change.target]
        start = self.state_entry(item, S.STARTED, expected=item.entry_id)
        crashpoint("after_started", change.id)
        outcomes: list[dict[str, Any]] = []
        try:
            with target.session(atomic=False) as session:
                dependencies = self.dependencies(item, session)
                for step in change.steps:
                    crashpoint("before_apply", change.id)
                    step.apply(dependencies)
                    outcomes.append({"step": step.label, "apply": "done"})
                crashpoint("after_apply", change.id)
        except Exception as error:
            return self.compensate(item, started, start.pk, error, outcomes)
        entry = self.state_entry(item, S.APPLIED, expected=start.pk, duration_ms=self.elapsed(started), details={"steps": outcomes})
        crashpoint("after_applied", change.id)
        return self.result(item, Result.APPLIED, entry_ids=[start.pk, entry.pk])

    def compensate(self, item: PlanItem, started: float, expected: int, error: Exception, outcomes: list[dict[str, Any]]) -> ChangeResult:
        """FAILED, then the rollback of what was done, newest first, if every part has one."""
        change, target = item.change, self.targets[item.change.target]
        steps = change.steps
        completed = steps[: len(outcomes)]
        failed_step = steps[len(outcomes)] if len(outcomes) < len(steps) else None
        if failed_step is not None:
            outcomes.append({"step": failed_step.label, "apply": "failed", "error": str(error)})
        to_undo = list(reversed(completed))
        if failed_step is not None and failed_step.compensates_own_failure:
            to_undo.insert(0, failed_step)
        apply_error = format_error(error)
        failed = self.state_entry(
            item, S.FAILED, expected=expected, error=apply_error, duration_ms=self.elapsed(started), details={"steps": outcomes}
        )
        ids = [expected, failed.pk]
        if not to_undo or any(step.rollback is None for step in to_undo):
            why = "no compensation: nothing completed" if not to_undo else "no compensation: a completed step has no rollback"
            return self.result(item, Result.FAILED, why, error=str(error), entry_ids=ids)
        rollback_start = self.state_entry(item, S.ROLLBACK_STARTED, expected=failed.pk, details={"compensating": [step.label for step in to_undo]})
        ids.append(rollback_start.pk)
        try:
            with target.session(atomic=False) as session:
                dependencies = self.dependencies(item, session)
                for step in to_undo:
                    step.rollback(dependencies)
                    outcomes.append({"step": step.label, "rollback": "done"})
        except Exception as rollback_error:
            entry = self.state_entry(
                item,
                S.ROLLBACK_FAILED,
                expected=rollback_start.pk,
                error=apply_error,
                rollback_error=format_error(rollback_error),
                details={"steps": outcomes},
            )
            ids.append(entry.pk)
            return self.result(item, Result.FAILED, "apply failed and its compensation failed too", error=str(error), entry_ids=ids)
        entry = self.state_entry(
            item, S.ROLLED_BACK, expected=rollback_start.pk, error=apply_error, details={"steps": outcomes, "compensation": True}
        )
        ids.append(entry.pk)
        return self.result(item, Result.ROLLED_BACK, "apply failed; compensated by its rollback", error=str(error), entry_ids=ids)

    # -- reconciliation ---------------------------------------------------------------------------

    def reconcile(self, item: PlanItem) -> bool:
        """Settle a STARTED change from evidence; False when it needs a human (stage blocked)."""
        change, target = item.change, self.targets[item.change.target]
        started = time.perf_counter()
        try:
            if item.strategy == Strategy.MARKER:
                marker = target.marker_lookup(change_id=change.id, generation=item.generation)
                present = marker is not None
                evidence = (
                    f"marker row for generation {item.generation} present in {change.target} (run {marker['run_id']}, token {marker['fencing_token']})"
                    if present
                    else f"no marker row for generation {item.generation} in {change.target}: the target transaction never committed"
                )
            else:
                with target.session(atomic=False) as session:
                    present = change.verify(self.dependencies(item, session))
                evidence = "verify probe found the effect present" if present else "verify probe found the effect absent or partial"
        except TargetUnavailable as error:
            # Only a failed connection is "unreachable"; a target that answered with an error is not.
            self.results.append(self.result(item, Result.BLOCKED, f"cannot reconcile: target {change.target!r} unreachable: {error}"))
            return False
        except Exception as error:
            why = f"cannot reconcile: target {change.target!r} answered with an error: {type(error).__name__}: {error}"
            self.results.append(self.result(item, Result.BLOCKED, why))
            return False
        details = {"reconciled": True, "evidence": evidence, "generation": item.generation}
        if present:
            entry = self.state_entry(item, S.APPLIED, expected=item.entry_id, duration_ms=self.elapsed(started), details=details)
            self.results.append(self.result(item, Result.RECONCILED, evidence, entry_ids=[entry.pk]))
            return True
        if item.strategy == Strategy.MARKER:
            entry = self.state_entry(item, S.ROLLED_BACK, expected=item.entry_id, details=details)
            item.entry_id, item.action, item.reason = entry.pk, Action.APPLY, evidence
            return True
        self.results.append(self.result(item, Result.BLOCKED, f"needs a human: {evidence}"))
        return False


def results_as_dicts(results: list[ChangeResult]) -> list[dict[str, Any]]:
    # Shallow copies (``asdict`` deep-copies every field): a run's results are plain values.
    return [{**vars(result), "entry_ids": list(result.entry_ids)} for result in results]


def counts_of(results: list[ChangeResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.result] = counts.get(result.result, 0) + 1
    return counts


def database_alias() -> str:
    return router.db_for_write(AuditEntry)
