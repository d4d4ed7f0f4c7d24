"""Adoption of a database whose Django migrations were applied before governance (docs/django-migrations.md,
"Adoption"): each migration with a recorder row is recorded as applied outside governance, by whom, when,
with its checksum and the reason, and the alias stops blocking its Django changes with ``not_adopted``.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit_app.services import Actor
from changes_app.conf import current_environment
from changes_app.engine.actions import ACTIONS, Kind
from changes_app.errors import ActionRefused, require_reason
from changes_app.governance.permissions import target_operate_check
from changes_app.governance.policy import approvals_required
from changes_app.governance.refusals import refusals_recorded
from changes_app.models import ChangeRequest, DjangoAdoption
from changes_app.pipeline.django_migrations import adoption_required, governed_aliases
from changes_app.pipeline.rules import adopt_check, adoption_rows, adoption_subject, adoption_target
from changes_app.services.requests import Submission, request_create, request_execute
from changes_app.services.runs import run_start


@dataclass(frozen=True)
class AdoptionStatus:
    """What adopting an alias would record, or what it recorded."""

    alias: str
    target: str
    required: bool
    adoption: DjangoAdoption | None
    #: ``[{"change_id", "checksum"}]``: the governed migrations with a recorder row, in graph order.
    recorded: list[dict[str, str]]


def django_adoption_status(*, alias: str, actor: Actor) -> AdoptionStatus:
    """Whether ``alias`` needs adopting and what adoption would record; reads, never writes."""
    if alias not in governed_aliases():
        raise ActionRefused(f"database {alias!r} has no governed Django migrations (FLAMINGOCK_DJANGO_MIGRATIONS)")
    target = adoption_target(alias)
    target_operate_check(actor, target)
    rows = adoption_rows(alias)
    return AdoptionStatus(alias, target, adoption_required(alias), DjangoAdoption.objects.filter(alias=alias).first(), rows)


@refusals_recorded("adopt", object="database {alias}")
def django_adopt(*, alias: str, actor: Actor, reason: str, source: str, inline: bool = True) -> Submission:
    """Adopt database ``alias`` (the governed action ADOPT; its rule is ``rules.adopt_check``, the
    actor must be allowed to operate the alias's target system).

    Where no approval policy governs that target, a run of kind ADOPT adopts it at once, in this
    process, under the lock. Otherwise it is a request of kind ADOPT on ``django:<alias>``, bound to
    the recorder rows seen now (``rules.adoption_digest``), which the policy's approvers decide as
    any other request; approved (at once where the policy requires none), the run executes it.
    """
    action = ACTIONS[Kind.ADOPT]
    reason = require_reason(reason)
    adopt_check(alias)
    target = adoption_target(alias)
    target_operate_check(actor, target)
    if approvals_required(target_name=target, environment=current_environment()) is None:
        run = run_start(
            actor=actor,
            source=source,
            kind=action.run_kind,
            change_id=adoption_subject(alias),
            reason=reason,
            parameters={**action.parameters, "alias": alias},
        )
        return Submission(None, run)
    rows = adoption_rows(alias)
    request = request_create(kind=Kind.ADOPT, change_id=adoption_subject(alias), actor=actor, reason=reason, source=source)
    # What the approvers decide: the migrations it records, shown on the request (admin, API).
    ChangeRequest.objects.filter(pk=request.pk).update(rendered={"adoption": {"alias": alias, "migrations": rows}})
    request.refresh_from_db()
    if request.status == ChangeRequest.Status.APPROVED:
        run = request_execute(request_id=request.pk, inline=inline)
        request.refresh_from_db()
        return Submission(request, run)
    return Submission(request, None)
