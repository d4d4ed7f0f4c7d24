"""Approval policies: how many distinct approvals a governed action needs, and the resolver's
approval gate that holds a pending change until an approved request covers its checksum.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit_app.models import ChangeState
from audit_app.services import Actor, audit_record
from changes_app.conf import current_environment
from changes_app.definitions import ChangeDefinition
from changes_app.errors import NotFound, PolicyInvalid
from changes_app.governance.permissions import PermissionRefused, actor_user, environment_protected
from changes_app.models import Approval, ApprovalPolicy, ChangeRequest, TargetSystem

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status


def approvals_required(*, target_name: str, environment: str) -> int | None:
    """How many distinct approvals a governed action on ``target_name`` needs in ``environment``.

    ``None`` where nothing governs it: an unprotected environment without a policy row (the action
    is performed directly, as a developer's machine expects). A protected environment needs at
    least one, whatever its row says (the list of protected environments may grow after a row was
    saved).
    """
    required = (
        ApprovalPolicy.objects.filter(target_system__name=target_name, environment=environment).values_list("required_approvals", flat=True).first()
    )
    if environment_protected(environment):
        return max(required or 0, 1)
    return required


def approvals_required_for(targets: list[str], environment: str) -> int | None:
    """The approvals an action touching ``targets`` needs: the most any of their policies asks
    (an undo cascades over later changes, maybe on other target systems)."""
    required = [approvals_required(target_name=target, environment=environment) for target in dict.fromkeys(targets)]
    governed = [count for count in required if count is not None]
    return max(governed) if governed else None


def policy_set(*, target_name: str, environment: str, required_approvals: int, actor: Actor) -> ApprovalPolicy:
    """Set how many approvals actions on a target system need in an environment (audited)."""
    user = actor_user(actor)
    if user is None or not user.has_perm("changes_app.change_approvalpolicy"):
        raise PermissionRefused(f"{actor.name} may not configure approval policies")
    environment = (environment or "").strip()
    if not environment:
        raise PolicyInvalid("an environment is required")
    if not isinstance(required_approvals, int) or isinstance(required_approvals, bool) or required_approvals < 0:
        raise PolicyInvalid("the number of required approvals must be a whole number, 0 or more")
    if required_approvals < 1 and environment_protected(environment):
        raise PolicyInvalid(f"{environment} is a protected environment: every action there needs at least 1 approval")
    target = TargetSystem.objects.filter(name=target_name).first()
    if target is None:
        raise NotFound(f"no target system {target_name!r}")
    with transaction.atomic():
        policy = ApprovalPolicy.objects.select_for_update().filter(target_system=target, environment=environment).first()
        previous = policy.required_approvals if policy is not None else None
        if policy is None:
            policy = ApprovalPolicy(target_system=target, environment=environment)
        policy.required_approvals = required_approvals
        policy.updated_by = actor.name
        policy.save()
        audit_record(
            event="policy.changed",
            actor=actor,
            environment=current_environment(),
            details={"target": target.name, "environment": environment, "previous": previous, "required_approvals": required_approvals},
        )
    return policy


# -- the resolver's approval hook ------------------------------------------------------------------


class ApprovalGate:
    """Why a pending change cannot be applied yet in a governed environment ("" when it can).

    A change passes with an APPROVED APPLY request of this environment (or an executed REAPPLY
    request) that has not expired, was made for the change's current checksum and for its current
    apply generation (the approval covers retries until the change is applied once). ``evidence``
    keeps, per change, the approval
    that let it through, so that the engine records it with the change's entries.
    """

    def __init__(self, environment: str):
        self.environment = environment
        self.evidence: dict[str, dict] = {}
        #: target system -> approvals required, read once per plan or run.
        self._required: dict[str, int | None] = {}

    def __call__(self, change: ChangeDefinition) -> str:
        if change.target not in self._required:
            self._required[change.target] = approvals_required(target_name=change.target, environment=self.environment)
        required = self._required[change.target]
        if not required:
            return ""
        now = timezone.now()
        generation = ChangeState.objects.filter(change_id=change.id).values_list("applied_count", flat=True).first() or 0
        approved = apply_approval(change_id=change.id, checksum=change.checksum, environment=self.environment, generation=generation, now=now)
        if approved is not None:
            self.evidence[change.id] = approval_evidence(approved)
            return ""
        self.evidence.pop(change.id, None)
        requests = ChangeRequest.objects.filter(kind=Kind.APPLY, change_id=change.id, environment=self.environment).order_by("-id")
        pending = requests.filter(status=Status.PENDING, checksum=change.checksum, expires_at__gt=now).first()
        if pending is not None:
            count = pending.approvals.filter(decision=Approval.Decision.APPROVE).count()
            return f"request #{pending.pk} has {count} of {pending.required_approvals} approval(s)"
        stale = requests.filter(status=Status.APPROVED, expires_at__gt=now).exclude(checksum=change.checksum).first()
        if stale is not None:
            return (
                f"the approval of request #{stale.pk} covers checksum {stale.checksum[:12]}, but the change is now "
                f"{change.checksum[:12]}: request its apply again"
            )
        return f"needs {required} approval(s) on {change.target} in {self.environment}: request its apply"


def apply_approval(*, change_id: str, checksum: str, environment: str, generation: int, now=None) -> ChangeRequest | None:
    """The request that lets this apply of the change run: an approved APPLY request, or an
    executed REAPPLY request (an approved release is an approval to apply it again, docs/semantics.md §8.4);
    made for this checksum and this apply generation, and not expired."""
    return (
        ChangeRequest.objects.filter(Q(kind=Kind.APPLY, status=Status.APPROVED) | Q(kind=Kind.REAPPLY, status=Status.EXECUTED))
        .filter(change_id=change_id, environment=environment, checksum=checksum, applied_generation=generation, expires_at__gt=now or timezone.now())
        .order_by("-id")
        .first()
    )


def approval_gate(*, environment: str) -> ApprovalGate | None:
    """The approval hook of plans and runs, or ``None`` where no policy requires an approval."""
    if not environment_protected(environment) and not ApprovalPolicy.objects.filter(environment=environment, required_approvals__gt=0).exists():
        return None
    return ApprovalGate(environment)


def approval_evidence(request: ChangeRequest) -> dict:
    """What the ledger records of the approval behind an action."""
    approvers = [a.approver_name for a in request.approvals.all() if a.decision == Approval.Decision.APPROVE]
    return {
        "request_id": request.pk,
        "kind": request.kind,
        "checksum": request.checksum,
        "required": request.required_approvals,
        "approved_by": approvers,
        "automatic": request.required_approvals == 0,
    }
