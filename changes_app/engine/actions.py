"""The governed single-change actions, in one table: what each is called, the rule that allows it,
the run that executes it and the executor that does the work under the pipeline lock.

Adding an action kind is one :class:`ActionKind` entry, its rule (``pipeline.rules``) and its
executor here; the services, requests, admin, API and command line read the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from audit_app.services import ChangeRef, FenceRefused, StateMoved
from changes_app.definitions import Strategy
from changes_app.engine.executor import ChangeResult, Executor, Result, format_error
from changes_app.errors import ActionRefused, NotFound
from changes_app.models import ChangeRequest, DjangoAdoption, Run
from changes_app.pipeline.django_migrations import governed_migrations, recorded_migrations, stage_name
from changes_app.pipeline.plan import PlanItem
from changes_app.pipeline.rules import (
    Subject,
    accept_checksum_check,
    adopt_check,
    adoption_alias,
    adoption_digest,
    adoption_target,
    apply_check,
    fix_check,
    reapply_check,
    skip_check,
    undo_cascade,
    undo_check,
)

Kind = ChangeRequest.Kind


def _item(executor: Executor, change_id: str) -> PlanItem:
    item = executor.plan().item(change_id)
    if item is None:
        raise NotFound(f"no change {change_id!r} in the pipeline")
    return item


def fix_execute(executor: Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    state = fix_check(Subject(item.change, item.state, item.strategy), run.parameters.get("resolution", ""))
    entry = executor.state_entry(item, state, expected=item.entry_id, reason=run.reason, details={"resolution": run.parameters["resolution"]})
    executor.results.append(executor.result(item, state, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def skip_execute(executor: Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    skip_check(Subject(item.change, item.state, item.strategy))
    entry = executor.state_entry(item, S.SKIPPED, expected=item.entry_id, reason=run.reason)
    executor.results.append(executor.result(item, Result.SKIPPED, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def reapply_execute(executor: Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    reapply_check(Subject(item.change, item.state, item.strategy))
    entry = executor.state_entry(item, S.MANUAL_MARKED_AS_ROLLED_BACK, expected=item.entry_id, reason=run.reason, details={"released": True})
    executor.results.append(executor.result(item, S.MANUAL_MARKED_AS_ROLLED_BACK, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def accept_checksum_execute(executor: Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    accept_checksum_check(Subject(item.change, item.state, item.strategy))
    entry = executor.audit(
        "change.checksum_accepted",
        state="",
        change=executor.ref(item),
        fence=executor.lease,
        expected_entry_id=item.entry_id,
        reason=run.reason,
        details={"previous_checksum": item.state.checksum, "new_checksum": item.change.checksum},
    )
    executor.results.append(executor.result(item, "CHECKSUM_ACCEPTED", run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def undo_execute(executor: Executor, run: Run) -> tuple[str, str]:
    cascade = undo_cascade(run.change_id, pipeline=executor.pipeline)
    hold_reason = f"held after undo of {run.change_id} (run {run.id}): {run.reason}"
    for subject in cascade:
        executor.check_lease()
        executor.progress(current=subject.change.id, force=True)
        item = _item(executor, subject.change.id)
        result = _undo_one(executor, item, hold_reason)
        executor.results.append(result)
        if result.result != Result.ROLLED_BACK:
            return Run.Status.FAILED, f"undo of {item.change.id} failed: {result.error}"
    return Run.Status.SUCCEEDED, ""


def _undo_one(executor: Executor, item: PlanItem, hold_reason: str) -> ChangeResult:
    change, target = item.change, executor.targets[item.change.target]
    steps = list(reversed(change.steps))
    started = time.perf_counter()
    if item.strategy == Strategy.SHARED_TRANSACTION:
        try:
            with target.session(atomic=True) as session:
                dependencies = executor.dependencies(item, session)
                for step in steps:
                    step.rollback(dependencies)
                rolled = executor.state_entry(
                    item, S.ROLLED_BACK, expected=item.entry_id, duration_ms=executor.elapsed(started), details={"undo": True}
                )
                held = executor.state_entry(item, S.SKIPPED, expected=rolled.pk, reason=hold_reason)
        except (FenceRefused, StateMoved):
            raise
        except Exception as error:
            entry = executor.audit(
                "change.rollback_failed",
                change=executor.ref(item),
                fence=executor.lease,
                rollback_error=format_error(error),
                details={"undo": True, "rolled_back_natively": True, "still_applied": True},
            )
            return executor.result(
                item,
                Result.FAILED,
                "rollback raised; its transaction was rolled back, the change is still applied",
                error=str(error),
                entry_ids=[entry.pk],
            )
        return executor.result(item, Result.ROLLED_BACK, hold_reason, entry_ids=[rolled.pk, held.pk])
    start = executor.state_entry(item, S.ROLLBACK_STARTED, expected=item.entry_id, details={"undo": True})
    try:
        with target.session(atomic=item.strategy == Strategy.MARKER) as session:
            dependencies = executor.dependencies(item, session)
            for step in steps:
                step.rollback(dependencies)
    except Exception as error:
        if item.strategy == Strategy.MARKER:
            # The target transaction rolled back: the change is known to be still applied.
            entry = executor.state_entry(
                item,
                S.APPLIED,
                expected=start.pk,
                rollback_error=format_error(error),
                details={"undo": True, "undo_failed": True, "rolled_back_natively": True},
                counts_as_apply=False,
            )
        else:
            entry = executor.state_entry(item, S.ROLLBACK_FAILED, expected=start.pk, rollback_error=format_error(error), details={"undo": True})
        return executor.result(item, Result.FAILED, "rollback raised", error=str(error), entry_ids=[start.pk, entry.pk])
    rolled = executor.state_entry(item, S.ROLLED_BACK, expected=start.pk, duration_ms=executor.elapsed(started), details={"undo": True})
    held = executor.state_entry(item, S.SKIPPED, expected=rolled.pk, reason=hold_reason)
    return executor.result(item, Result.ROLLED_BACK, hold_reason, entry_ids=[start.pk, rolled.pk, held.pk])


def adopt_execute(executor: Executor, run: Run) -> tuple[str, str]:
    """Record every governed migration with a recorder row on the alias as applied outside
    governance (``change.adopted``, MANUAL_MARKED_AS_APPLIED), then the alias's adoption: one
    transaction, under the lock."""
    alias = run.parameters.get("alias") or adoption_alias(run.change_id)
    adopt_check(alias)
    target = adoption_target(alias)
    request = run.requests.first()
    if request is not None and request.checksum != adoption_digest(alias):
        # Under the lock: the approval covers the recorder rows seen at request time, no others.
        raise ActionRefused(f"request #{request.pk} is stale: the recorder rows of {alias!r} changed since it was requested")
    recorded = recorded_migrations(alias)
    adopted: list[dict[str, str]] = []
    with transaction.atomic(using=executor.alias):
        for position, migration in enumerate(governed_migrations(alias), start=1):
            if migration.change_id not in recorded:
                continue
            executor.check_lease()
            state = ChangeState.objects.filter(change_id=migration.change_id).first()
            if state is not None and state.state in APPLIED_STATES:
                continue  # already in the ledger: nothing to adopt
            # As the pipeline describes the change (its stage, order, target and strategies) when it can.
            change = executor.pipeline.by_id.get(migration.change_id)
            ref = ChangeRef(
                id=migration.change_id,
                stage=change.stage if change is not None else stage_name(alias),
                order=change.order if change is not None else f"{position:05d}",
                target=change.target if change is not None else target,
                checksum=migration.checksum,
                transaction_strategy=executor.strategies[change.id].value if change is not None and change.id in executor.strategies else "",
                recovery_strategy=change.recovery.value if change is not None else "",
            )
            entry = executor.audit(
                "change.adopted",
                state=S.MANUAL_MARKED_AS_APPLIED,
                change=ref,
                fence=executor.lease,
                expected_entry_id=state.entry_id if state is not None else None,
                reason=run.reason,
                details={"alias": alias, "applied_outside_governance": True},
            )
            adopted.append({"change_id": migration.change_id, "checksum": migration.checksum})
            executor.results.append(ChangeResult(ref.id, ref.stage, ref.order, "ADOPT", S.MANUAL_MARKED_AS_APPLIED, run.reason, entry_ids=[entry.pk]))
        DjangoAdoption.objects.create(
            alias=alias,
            adopted_by_id=run.started_by_id,
            adopted_by_name=run.actor,
            reason=run.reason,
            request=request,
            migrations=adopted,
        )
    return Run.Status.SUCCEEDED, f"adopted database {alias!r}: {len(adopted)} migration(s) recorded as applied outside governance"


@dataclass(frozen=True)
class ActionKind:
    """One governed action on a change.

    ``kind`` is the request kind (what approvers decide), ``run_kind`` the run that executes it
    (``None``: the pipeline's runs apply it), ``parameters`` what that run is given.
    """

    kind: str
    label: str
    run_kind: str | None
    check: Callable[[Subject, ActionKind, str], None]
    parameters: dict = field(default_factory=dict)
    #: The request is keyed by this subject; a change for every kind of this table.
    subject: str = "change"


def _undo_rule(subject: Subject, action: ActionKind, environment: str) -> None:
    undo_check(subject.change.id)


def _fix_rule(subject: Subject, action: ActionKind, environment: str) -> None:
    fix_check(subject, action.parameters["resolution"])


def _adopt_rule(subject: Subject, action: ActionKind, environment: str) -> None:
    # Adoption is of a database alias (``rules.adopt_check``), never of one change.
    raise ActionRefused("adoption is of a database, not of one change: flamingock adopt django --database ALIAS")


ACTIONS: dict[str, ActionKind] = {
    action.kind: action
    for action in (
        ActionKind(Kind.APPLY, _("Request apply"), None, lambda subject, action, environment: apply_check(subject, environment)),
        ActionKind(Kind.UNDO, _("Undo"), Run.Kind.UNDO, _undo_rule),
        ActionKind(Kind.MARK_APPLIED, _("Fix: mark as applied"), Run.Kind.FIX, _fix_rule, {"resolution": "applied"}),
        ActionKind(Kind.MARK_ROLLED_BACK, _("Fix: mark as rolled back"), Run.Kind.FIX, _fix_rule, {"resolution": "rolled-back"}),
        ActionKind(Kind.SKIP, _("Skip"), Run.Kind.SKIP, lambda subject, action, environment: skip_check(subject)),
        ActionKind(
            Kind.ACCEPT_CHECKSUM, _("Accept checksum"), Run.Kind.ACCEPT_CHECKSUM, lambda subject, action, environment: accept_checksum_check(subject)
        ),
        ActionKind(Kind.REAPPLY, _("Re-apply"), Run.Kind.REAPPLY, lambda subject, action, environment: reapply_check(subject)),
        ActionKind(Kind.ADOPT, _("Adopt a database's Django migrations"), Run.Kind.ADOPT, _adopt_rule, subject="database"),
    )
}

#: The request kind of each answer of ``fix --resolution``.
FIX_KINDS = {action.parameters["resolution"]: action.kind for action in ACTIONS.values() if action.run_kind == Run.Kind.FIX}

#: The executor of each single-change run kind.
EXECUTORS: dict[str, Callable[[Executor, Run], tuple[str, str]]] = {
    Run.Kind.UNDO: undo_execute,
    Run.Kind.FIX: fix_execute,
    Run.Kind.SKIP: skip_execute,
    Run.Kind.REAPPLY: reapply_execute,
    Run.Kind.ACCEPT_CHECKSUM: accept_checksum_execute,
    Run.Kind.ADOPT: adopt_execute,
}


def action_for(kind: str) -> ActionKind:
    try:
        return ACTIONS[kind]
    except KeyError:
        raise NotFound(f"unknown action kind {kind!r}") from None
