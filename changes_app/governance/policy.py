"""Approval policies: how many distinct approvals a governed action needs, and the resolver's
approval gate that holds a pending change until an approved request covers its checksum.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit_app.models import ChangeState
from audit_app.services import Actor, audit_record
from changes_app.conf import current_environment, environments_declared
from changes_app.definitions import ChangeDefinition
from changes_app.errors import NotFound, PolicyInvalid, require_reason
from changes_app.governance.permissions import APPROVE, PermissionRefused, actor_may, actor_user, environment_protected, users_with
from changes_app.governance.roles import COMPLIANCE_OFFICER
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


def environment_declared(environment: str) -> str:
    """``environment`` stripped, refused unless it is one of the declared environments: a typo
    must not silently create a policy for an environment that does not exist."""
    environment = (environment or "").strip()
    if not environment:
        raise PolicyInvalid("an environment is required")
    declared = environments_declared()
    if environment not in declared:
        raise PolicyInvalid(f"{environment!r} is not a declared environment: choose one of {', '.join(declared)} (FLAMINGOCK_ENVIRONMENTS)")
    return environment


def policy_set(
    *, target_name: str, environment: str, required_approvals: int, actor: Actor, reason: str, fleet_canary_approval: bool | None = None
) -> ApprovalPolicy:
    """Set how many approvals actions on a target system need in an environment (audited with
    the reason given); with ``fleet_canary_approval``, whether fleet runs on the target group stop
    after their canary for a fresh approval (``None``: left as it is)."""
    user = actor_user(actor)
    if user is None or not user.has_perm("changes_app.change_approvalpolicy"):
        raise PermissionRefused(f"{actor.name} may not configure approval policies")
    environment = environment_declared(environment)
    reason = require_reason(reason, error=PolicyInvalid)
    if not isinstance(required_approvals, int) or isinstance(required_approvals, bool) or required_approvals < 0:
        raise PolicyInvalid("the number of required approvals must be a whole number, 0 or more")
    if fleet_canary_approval is not None and not isinstance(fleet_canary_approval, bool):
        raise PolicyInvalid("whether fleet runs need an approval after the canary must be true or false")
    if required_approvals < 1 and environment_protected(environment):
        raise PolicyInvalid(f"{environment} is a protected environment: every action there needs at least 1 approval")
    target = TargetSystem.objects.filter(name=target_name).first()
    if target is None:
        raise NotFound(f"no target system {target_name!r}")
    with transaction.atomic():
        policy = ApprovalPolicy.objects.select_for_update().filter(target_system=target, environment=environment).first()
        previous = policy.required_approvals if policy is not None else None
        previous_canary = policy.fleet_canary_approval if policy is not None else None
        if policy is None:
            policy = ApprovalPolicy(target_system=target, environment=environment)
        policy.required_approvals = required_approvals
        if fleet_canary_approval is not None:
            policy.fleet_canary_approval = fleet_canary_approval
        policy.updated_by = actor.name
        policy.save()
        audit_record(
            event="policy.changed",
            actor=actor,
            environment=current_environment(),
            reason=reason,
            details={
                "target": target.name,
                "environment": environment,
                "previous": previous,
                "required_approvals": required_approvals,
                "previous_fleet_canary_approval": previous_canary,
                "fleet_canary_approval": policy.fleet_canary_approval,
            },
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
    """What the ledger records of the approval behind an action (a break-glass use approves as its
    requester, docs/break-glass.md)."""
    approvers = [a.approver_name for a in request.approvals.all() if a.decision == Approval.Decision.APPROVE]
    evidence = {
        "request_id": request.pk,
        "kind": request.kind,
        "checksum": request.checksum,
        "required": request.required_approvals,
        "approved_by": approvers,
        "automatic": request.required_approvals == 0 and not request.break_glass,
    }
    if request.break_glass:
        evidence.update(approved_by=[request.requester_name], break_glass=True, incident=request.incident)
    return evidence


# -- break-glass: a use is the approval, for the person who holds the permission ---------------------

#: Act without prior approval in an incident (docs/break-glass.md): its own permission, global or on
#: a target system; no role holds it by default.
BREAK_GLASS = "changes_app.break_glass"
#: Distinct approvals a break-glass review needs, whatever the policy says.
REVIEW_APPROVALS = 2


def break_glass_check(*, actor: Actor, targets: list[str], environment: str) -> int:
    """Refuse a break-glass use that ``actor`` may not make on ``targets``; returns the approvals the
    policy would have required (a use is only for an action that a policy governs)."""
    user = actor_user(actor)
    if user is None:
        raise PermissionRefused(f"{actor.name} is not a proven user: break-glass needs a login or a personal API token")
    if user.groups.filter(name=COMPLIANCE_OFFICER).exists():
        raise PermissionRefused(f"{actor.name} is a compliance officer: compliance officers never use break-glass")
    for target in dict.fromkeys(targets):
        if not actor_may(actor, BREAK_GLASS, target):
            raise PermissionRefused(f"{actor.name} may not use break-glass on target system {target!r}")
    required = approvals_required_for(targets, environment)
    if not required:
        raise PolicyInvalid(f"no approval governs {', '.join(dict.fromkeys(targets))} in {environment}: perform the action without break-glass")
    return required


# -- what a governed action will need, said before it is confirmed -----------------------------------


def approvers_eligible(*, targets: list[str], environment: str, requester_id: int | None = None) -> list[str]:
    """The usernames of the active people who may decide an action touching ``targets``: those who
    hold ``approve`` on every one of them (globally or on the object), never the requester."""
    names: set[str] | None = None
    for name in dict.fromkeys(targets):
        target = TargetSystem.objects.filter(name=name).first()
        if target is None:
            return []
        holders = set(users_with(permission=APPROVE, target=target).exclude(pk=requester_id).values_list("username", flat=True))
        names = holders if names is None else names & holders
    return sorted(names or [])


@dataclass(frozen=True)
class GatePreview:
    """What the policy service will decide for an action: ``required`` is ``None`` where nothing
    governs it (it runs now), 0 where the policy approves it automatically."""

    targets: tuple[str, ...]
    environment: str
    required: int | None
    approvers: tuple[str, ...]

    @property
    def runs_now(self) -> bool:
        return not self.required

    @property
    def text(self) -> str:
        where = ", ".join(self.targets)
        if self.required is None:
            return f"Runs now: no approval policy for {where} in {self.environment}."
        if self.required == 0:
            return f"Runs now: the policy of {where} in {self.environment} approves it automatically (recorded as a request)."
        who = ", ".join(self.approvers) if self.approvers else "nobody yet (no one holds Approver on it)"
        return f"Needs {self.required} approval{'s' if self.required != 1 else ''} from: {who} (Approver on {where})."

    def as_dict(self) -> dict:
        return {
            "targets": list(self.targets),
            "environment": self.environment,
            "required_approvals": self.required,
            "runs_now": self.runs_now,
            "eligible_approvers": list(self.approvers),
            "text": self.text,
        }


def gate_preview(*, targets: list[str], environment: str, requester_id: int | None = None) -> GatePreview:
    """The approval gate of an action on ``targets``, computed as ``approvals_required_for`` decides it."""
    targets = list(dict.fromkeys(targets))
    required = approvals_required_for(targets, environment)
    approvers = approvers_eligible(targets=targets, environment=environment, requester_id=requester_id) if required else []
    return GatePreview(tuple(targets), environment, required, tuple(approvers))
