"""Drift of governed Django migrations (docs/django-migrations.md, "Drift"), seen by the definition check.

For each governed database alias that needs no adoption, the recorder (``django_migrations``) is
compared with the ledger:

- ``applied_outside_governance``: a recorder row with no applied ledger entry (a plain ``migrate``,
  or a row inserted by hand);
- ``unapplied_outside_governance``: an applied ledger entry with no recorder row (a plain
  ``migrate app zero``, or a row deleted by hand);
- ``CHECKSUM_MISMATCH``: an applied migration whose file changed since, when the plan does not
  already say so.

An alias that still needs adopting is left out: every one of its rows is "outside governance" until
adoption, and the plan blocks its changes with ``not_adopted``. A migration whose latest entry is a
run's STARTED is undecided (a run is applying it now), never drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from changes_app.errors import FlamingockError
from changes_app.models import Finding
from changes_app.pipeline.django_migrations import adoption_required, governed_aliases, governed_migrations, recorded_migrations, stage_name
from changes_app.pipeline.rules import adoption_target

#: The kinds this module reports (the definition check owns and resolves them).
KINDS = frozenset({Finding.Kind.APPLIED_OUTSIDE_GOVERNANCE, Finding.Kind.UNAPPLIED_OUTSIDE_GOVERNANCE})


@dataclass
class DjangoDrift:
    """What the comparison saw: conditions as ``drift.checks.Condition`` keyword arguments, and the
    change ids it could not decide this time."""

    conditions: list[dict[str, Any]] = field(default_factory=list)
    undecided: set[str] = field(default_factory=set)


def _target(alias: str) -> str:
    try:
        return adoption_target(alias)
    except FlamingockError:
        return ""


def django_drift_observe() -> DjangoDrift:
    seen = DjangoDrift()
    for alias in governed_aliases():
        if adoption_required(alias):
            continue
        migrations = governed_migrations(alias)
        if not migrations:
            continue
        recorded = recorded_migrations(alias)
        states = {state.change_id: state for state in ChangeState.objects.filter(change_id__in=[m.change_id for m in migrations])}
        where = {"target": _target(alias), "stage": stage_name(alias)}
        for migration in migrations:
            state = states.get(migration.change_id)
            applied = state is not None and state.state in APPLIED_STATES
            if state is not None and state.state in {S.STARTED, S.ROLLBACK_STARTED}:
                seen.undecided.add(migration.change_id)
                continue
            evidence = {"alias": alias, "path": migration.path, "ledger_state": state.state if state is not None else ""}
            if migration.change_id in recorded and not applied:
                seen.conditions.append(
                    {
                        "kind": Finding.Kind.APPLIED_OUTSIDE_GOVERNANCE,
                        "summary": f"{migration.change_id} has a django_migrations row on {alias} but the ledger never applied it",
                        "evidence": evidence,
                        "change_id": migration.change_id,
                        **where,
                    }
                )
            elif applied and migration.change_id not in recorded:
                seen.conditions.append(
                    {
                        "kind": Finding.Kind.UNAPPLIED_OUTSIDE_GOVERNANCE,
                        "summary": f"{migration.change_id} is applied in the ledger but has no django_migrations row on {alias}",
                        "evidence": evidence,
                        "change_id": migration.change_id,
                        **where,
                    }
                )
            if applied and state.checksum and migration.checksum and state.checksum != migration.checksum:
                seen.conditions.append(
                    {
                        "kind": Finding.Kind.CHECKSUM_MISMATCH,
                        "summary": f"{migration.change_id} was edited after it was applied",
                        "evidence": {"recorded_checksum": state.checksum, "code_checksum": migration.checksum, "path": migration.path},
                        "change_id": migration.change_id,
                        **where,
                    }
                )
    return seen
