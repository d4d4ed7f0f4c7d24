"""Step-by-step guidance for changes that need a human (``issues get``, the admin, the API)."""

from __future__ import annotations

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from changes_app.definitions import Strategy
from changes_app.pipeline.plan import Action, PlanItem


def _cli(command: str) -> str:
    return f"python manage.py flamingock {command}"


def issue_guidance(item: PlanItem) -> list[str]:
    """What to look at and what to run, in order, for one change in an uncertain state."""
    change, state = item.change, item.latest_state
    what = f"{change.id} on target system {change.target!r}"
    fix_applied = _cli(f'fix {change.id} --resolution applied --reason "..."')
    fix_rolled_back = _cli(f'fix {change.id} --resolution rolled-back --reason "..."')
    if item.action == Action.OUT_OF_ORDER:
        return [
            f"{change.id} is new but ordered before a change that is already applied in stage {change.stage!r}.",
            "If it was added by mistake with an old prefix, rename the file to an order after the last applied change.",
            f"If it must not run here, skip it: {_cli(f'skip {change.id} --reason ...')}",
            "If running it out of order is safe, set FLAMINGOCK_OUT_OF_ORDER=allow for this deploy.",
        ]
    if item.recorded_checksum and item.recorded_checksum != change.checksum:
        return [
            f"{change.id} was edited after it was applied: the code no longer matches what ran.",
            f"Find what changed: the trail records the checksum of the applied version ({(item.recorded_checksum or '')[:12]}); "
            f"compare {change.path} with its version in source control at the time of the APPLIED entry: {_cli(f'audit list --change {change.id} --history')}",
            "If the edit was a mistake, revert it: the stage runs again with no action.",
            f"If the edit is intended and the target already matches it, re-baseline: {_cli(f'accept-checksum {change.id} --reason ...')}",
            "If the target must change too, write a new change instead of editing an applied one.",
        ]
    if state in (S.ROLLBACK_STARTED, S.ROLLBACK_FAILED):
        return [
            f"The rollback of {what} did not complete{' and raised an error (below)' if state == S.ROLLBACK_FAILED else ': the process stopped during it'}.",
            f"Inspect {change.target!r}: which parts of the change are still in place? The rollback does: see {change.path}.",
            f"If you finish the rollback by hand (or it had completed), record it: {fix_rolled_back}",
            f"If you restore the change's effect instead, record that: {fix_applied}",
            "The stage stays blocked until then; other stages go on.",
        ]
    steps = [
        f"The last run could not settle {change.id} on its own ({item.unsettled}); the next run tries again, "
        "and until then a person decides from the target."
    ] if item.unsettled else []  # fmt: skip
    steps += [
        f"{what} {'started but never finished' if state == S.STARTED else 'failed'} and its outcome on the target is unknown"
        + (" (its strategy is non-transactional: there is no transaction to roll back)." if item.strategy == Strategy.NON_TRANSACTIONAL else "."),
        f"Inspect {change.target!r} for the effect of the change (see {change.path}).{_effects(change)}",
        f"If the effect is fully present, record it: {fix_applied}",
        f"If it is absent (or you removed a partial effect), record it so the next run applies it again: {fix_rolled_back}",
    ]
    if not change.has_verify:
        steps.append("To let the product settle this on its own next time, give the change a verify probe.")
    if change.recovery != "ALWAYS_RETRY":
        steps.append("If applying it twice is harmless, declare recovery ALWAYS_RETRY so it is retried instead.")
    return steps


def _effects(change) -> str:
    """What a template change does on its target, step by step: the state to look for."""
    if change.kind != "template":
        return ""
    done = "; ".join(f"{step.label}: {' '.join(step.preview.split())}" for step in change.steps if step.preview)
    return f" On {change.target!r} it does, in order: {done}." if done else ""


def issue_details(item: PlanItem) -> dict:
    """The issue as data: the change, its state, the last error and the guidance."""
    last_error = (
        AuditEntry.objects.filter(change_id=item.change.id)
        .exclude(error="", rollback_error="")
        .order_by("-id")
        .values("id", "event", "error", "rollback_error", "created_at", "run_id")
        .first()
    )
    return {
        "id": item.change.id,
        "stage": item.change.stage,
        "order": item.change.order,
        "target": item.change.target,
        "strategy": item.strategy.value,
        "latest_state": item.latest_state or None,
        "next_action": item.action.value,
        "reason": item.unsettled or item.reason,
        "error": (last_error or {}).get("error", ""),
        "rollback_error": (last_error or {}).get("rollback_error", ""),
        "error_entry": (last_error or {}).get("id"),
        "guidance": issue_guidance(item),
    }
