"""Which single-change actions a change allows now: the one rule the engine, the services, the
admin, the API and the command line all ask (docs/semantics.md §6).

Each check refuses with the reason (:class:`~changes_app.errors.ActionRefused`) or returns; none
writes anything.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from changes_app.definitions import ChangeDefinition, Strategy
from changes_app.errors import ActionRefused, NotFound, PipelineInvalid
from changes_app.models import DjangoAdoption
from changes_app.pipeline import django_migrations
from changes_app.pipeline.discovery import Pipeline, pipeline_load
from changes_app.pipeline.django_migrations import governed_aliases, governed_migrations, recorded_migrations, stage_alias, stage_name
from changes_app.pipeline.plan import Action, resolve
from changes_app.targets.base import target_systems

#: The two answers ``fix`` accepts, and the state each records.
RESOLUTIONS = {"applied": S.MANUAL_MARKED_AS_APPLIED, "rolled-back": S.MANUAL_MARKED_AS_ROLLED_BACK}


@dataclass
class Subject:
    """A change as the rules see it: its definition, its latest ledger state, its strategy."""

    change: ChangeDefinition
    state: ChangeState | None
    strategy: Strategy

    @property
    def state_name(self) -> str:
        return self.state.state if self.state else ""


def subject_of(change_id: str, *, pipeline: Pipeline | None = None) -> Subject:
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    change = pipeline.by_id.get(change_id)
    if change is None:
        raise NotFound(f"no change {change_id!r} in the pipeline")
    strategy = _targets()[change.target].strategy(transactional=change.transactional)
    return Subject(change, ChangeState.objects.filter(change_id=change_id).first(), strategy)


def undo_check(
    change_id: str, *, pipeline: Pipeline | None = None, recorded: Mapping[str, tuple[str, str]] | None = None
) -> tuple[Subject, list[ChangeDefinition]]:
    """Whether ``change_id`` may be undone now: the change and the changes of its stage the undo
    rolls back (itself and every later applied one, in stage order); refuses with the reason.

    Reads the applied states' ids and checksums only, so that asking (every change page offers
    undo or not) costs one light query at any size of stage; ``recorded`` (state and checksum by
    change id, as :func:`changes_app.services.plan.change_plan` read them for the same page) saves it."""
    pipeline = pipeline or pipeline_load()
    subject = subject_of(change_id, pipeline=pipeline)
    if subject.state is None or subject.state.state not in APPLIED_STATES:
        raise ActionRefused(f"{change_id} is not applied (latest state: {subject.state_name or 'none'}); nothing to undo")
    stage = next(stage for stage in pipeline.stages if stage.name == subject.change.stage)
    if recorded is None:
        recorded = {
            key: (S.APPLIED, checksum) for key, checksum in ChangeState.objects.filter(state__in=APPLIED_STATES).values_list("change_id", "checksum")
        }
    applied_names, order, without = frozenset(map(str, APPLIED_STATES)), subject.change.order, _without_rollback(pipeline)
    later, drifted, missing = [], [], []
    # A Django migration's undo cascades over the graph's applied dependants, not the stage's order.
    graph = django_migrations.stage_alias(stage.name) is not None
    for change in stage.changes:
        row = recorded.get(change.id)
        if row is None or row[0] not in applied_names:
            continue
        if (change.id != change_id and change_id not in getattr(change, "ancestors", ())) if graph else change.order < order:
            continue
        later.append(change)
        if row[1] and row[1] != change.checksum:
            drifted.append(change.id)
        if change.id in without:
            missing.append(change.id)
    if drifted:
        drifted.reverse()
        raise ActionRefused(f"undo refused while the checksum has drifted: {', '.join(drifted)} (accept the checksum or revert the edit first)")
    if missing:
        missing.reverse()
        raise ActionRefused(_no_rollback(change_id, missing, graph))
    return subject, later


def _no_rollback(change_id: str, missing: list[str], graph: bool) -> str:
    if graph:
        return (
            f"undo refused: {', '.join(missing)} has an irreversible operation "
            f"(undoing {change_id} must unapply every applied migration that depends on it); nothing was changed"
        )
    return f"undo refused: {', '.join(missing)} has no rollback (undoing {change_id} must undo every later applied change of its stage)"


def _targets() -> dict:
    """The configured target systems and the governed Django aliases."""
    return {**django_migrations.targets(), **target_systems()}


#: The pipeline last asked about, and the ids of its changes without a rollback.
_rollback_less: tuple[weakref.ref, frozenset[str]] | None = None


def _without_rollback(pipeline: Pipeline) -> frozenset[str]:
    """The ids of the changes of ``pipeline`` that have no rollback, worked out once per pipeline
    (a loaded pipeline does not change; reloading makes a new one)."""
    global _rollback_less
    known = _rollback_less
    if known is None or known[0]() is not pipeline:
        known = (weakref.ref(pipeline), frozenset(change.id for change in pipeline.by_id.values() if not change.has_rollback))
        _rollback_less = known
    return known[1]


def undo_cascade(change_id: str, *, pipeline: Pipeline | None = None) -> list[Subject]:
    """The changes an undo of ``change_id`` rolls back, newest first; refuses with the reason."""
    pipeline = pipeline or pipeline_load()
    subject, later = undo_check(change_id, pipeline=pipeline)
    states = {row.change_id: row for row in ChangeState.objects.filter(change_id__in=[c.id for c in later])}
    targets = _targets()
    cascade = [
        Subject(change, states[change.id], targets[change.target].strategy(transactional=change.transactional))
        for change in later
        if change.id in states and states[change.id].state in APPLIED_STATES
    ]
    cascade.reverse()
    # The rows as read now decide (a state may have moved since the check).
    drifted = [s.change.id for s in cascade if s.state.checksum and s.state.checksum != s.change.checksum]
    if drifted:
        raise ActionRefused(f"undo refused while the checksum has drifted: {', '.join(drifted)} (accept the checksum or revert the edit first)")
    missing = [s.change.id for s in cascade if not s.change.has_rollback]
    if missing:
        raise ActionRefused(_no_rollback(change_id, missing, django_migrations.is_django_change_id(change_id)))
    return cascade


def fix_check(subject: Subject, resolution: str) -> str:
    """The state a manual fix records; refused unless the change is in an uncertain state."""
    if resolution not in RESOLUTIONS:
        raise ActionRefused("resolution must be 'applied' or 'rolled-back'")
    action, _ = resolve(subject.change, subject.strategy, subject.state)
    # A verify probe that cannot prove the effect leaves a non-transactional STARTED change to a human.
    probed = action == Action.RECONCILE and subject.strategy == Strategy.NON_TRANSACTIONAL
    if subject.state is None or not (action == Action.MANUAL_INTERVENTION or probed) or subject.state.state in APPLIED_STATES:
        raise ActionRefused(
            f"{subject.change.id} needs no manual fix (latest state: {subject.state_name or 'none'}); fix resolves changes in an uncertain state"
        )
    return RESOLUTIONS[resolution]


def skip_check(subject: Subject) -> None:
    state = subject.state_name
    if state in APPLIED_STATES:
        raise ActionRefused(f"{subject.change.id} is applied; undo it instead of skipping it")
    if state == S.SKIPPED:
        raise ActionRefused(f"{subject.change.id} is already skipped")
    action, _ = resolve(subject.change, subject.strategy, subject.state)
    if action == Action.MANUAL_INTERVENTION:
        raise ActionRefused(f"{subject.change.id} is in an uncertain state ({state}); resolve it with fix first")


def reapply_check(subject: Subject) -> None:
    if subject.state is None or subject.state.state != S.SKIPPED:
        raise ActionRefused(
            f"{subject.change.id} is not held (latest state: {subject.state_name or 'none'}); only undone or skipped changes can be released"
        )


def accept_checksum_check(subject: Subject) -> None:
    if subject.state is None or subject.state.state not in APPLIED_STATES:
        raise ActionRefused(f"{subject.change.id} is not applied; its checksum is recorded when it runs")
    if subject.state.checksum == subject.change.checksum:
        raise ActionRefused(f"{subject.change.id} has no checksum drift")


def apply_check(subject: Subject, environment: str) -> None:
    """A requested apply: the change runs in ``environment`` and the resolver would apply it."""
    if not subject.change.applies_in(environment):
        raise ActionRefused(f"{subject.change.id} does not run in {environment}")
    action, why = resolve(subject.change, subject.strategy, subject.state)
    if action != Action.APPLY:
        raise ActionRefused(f"{subject.change.id} has nothing to apply (next action {action.value}: {why})")


def adoption_target(alias: str) -> str:
    """The target system that stands for database ``alias``: the target of its Django changes, named
    after the alias (``django_migrations.targets``). Who may operate it may adopt the alias; its
    approval policy governs the adoption."""
    if alias not in django_migrations.targets():
        raise ActionRefused(f"database {alias!r} has no governed Django migrations (FLAMINGOCK_DJANGO_MIGRATIONS)")
    return alias


def adopt_check(alias: str) -> None:
    """Whether database ``alias`` may be adopted now (docs/django-migrations.md, "Adoption"): its
    migrations are governed, nobody adopted it yet, and it holds recorder rows of governed apps
    that the ledger does not hold as applied (something to adopt)."""
    if alias not in governed_aliases():
        raise ActionRefused(f"database {alias!r} has no governed Django migrations (FLAMINGOCK_DJANGO_MIGRATIONS)")
    if DjangoAdoption.objects.filter(alias=alias).exists():
        raise ActionRefused(f"database {alias!r} is already adopted")
    recorded = recorded_migrations(alias)
    if not recorded:
        raise ActionRefused(f"database {alias!r} holds no recorder rows of governed apps: it needs no adoption")
    # What the run would record: rows the ledger does not already hold as applied (``adopt_execute``).
    applied = set(ChangeState.objects.filter(change_id__in=recorded, state__in=APPLIED_STATES).values_list("change_id", flat=True))
    if recorded <= applied:
        raise ActionRefused(
            f"database {alias!r} has nothing to adopt: the ledger already holds each of its {len(recorded)} recorder row(s) "
            "of governed apps as applied; it needs no adoption"
        )


def adoption_rows(alias: str) -> list[dict[str, str]]:
    """What adopting ``alias`` would record: ``[{"change_id", "checksum"}]`` of the governed
    migrations with a recorder row, in graph order."""
    recorded = recorded_migrations(alias)
    return [{"change_id": m.change_id, "checksum": m.checksum} for m in governed_migrations(alias) if m.change_id in recorded]


def adoption_digest(alias: str) -> str:
    """The checksum an ADOPT request is bound to: a digest of :func:`adoption_rows`, so that an
    approval covers exactly the rows seen when it was requested and a changed set makes it stale."""
    rows = [[row["change_id"], row["checksum"]] for row in adoption_rows(alias)]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def adoption_subject(alias: str) -> str:
    """The ``change_id`` an ADOPT request and its run carry: the alias's Django stage (``django:<alias>``)."""
    return stage_name(alias)


def adoption_alias(subject: str) -> str:
    """The alias of an ADOPT request's or run's ``change_id`` (:func:`adoption_subject`)."""
    alias = stage_alias(subject or "")
    if not alias:
        raise ActionRefused(f"{subject!r} names no database: an adoption is of django:<alias>")
    return alias
