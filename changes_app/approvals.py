"""Requests and approvals (DOMAIN §6): governed actions as requests bound to a change's id, checksum
and environment, decided by N distinct approvers, never by their requester.

Every transition takes the same five steps: a transaction, the request's row locked, its current
status checked (a named error refuses, nothing is written), the audit entry in the same
transaction, and the side effects (notifications, queued runs) once it commits. An approved
request is executed by the existing single-change runs (undo, fix, skip, re-apply, re-baseline),
on a worker (``services.run_queue``) or, for the command line, in this process. An approved APPLY
request is executed by the next run of the pipeline: the resolver's approval hook lets its change
through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit_app.models import ChangeState
from audit_app.services import Actor, ChangeRef, audit_record

from . import services
from .definitions import ChangeDefinition
from .discovery import Pipeline, pipeline_load
from .governance import (
    APPROVE,
    OPERATE,
    PermissionRefused,
    actor_may,
    actor_user,
    environment_protected,
    target_approve_check,
    target_operate_check,
    target_systems_for,
)
from .models import Approval, ApprovalPolicy, ChangeRequest, RequestComment, Run, TargetSystem
from .resolver import Action, _resolve

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status

#: Who approves a request automatically where the policy requires no approval.
POLICY = Actor(name="service:approval-policy", via="policy")
#: Who expires requests (a periodic task).
EXPIRY = Actor(name="service:request-expiry", via="schedule")

#: The single-change run that executes each kind (APPLY is executed by the pipeline's runs).
RUN_KINDS = {
    Kind.UNDO: Run.Kind.UNDO,
    Kind.REAPPLY: Run.Kind.REAPPLY,
    Kind.MARK_APPLIED: Run.Kind.FIX,
    Kind.MARK_ROLLED_BACK: Run.Kind.FIX,
    Kind.SKIP: Run.Kind.SKIP,
    Kind.ACCEPT_CHECKSUM: Run.Kind.ACCEPT_CHECKSUM,
}
#: The ``fix --resolution`` of each manual-fix kind.
RESOLUTIONS = {Kind.MARK_APPLIED: "applied", Kind.MARK_ROLLED_BACK: "rolled-back"}


class RequestRefused(services.ActionRefused):
    """A request cannot be made or moved as asked; nothing was changed."""


class RequestDuplicate(RequestRefused):
    pass


class RequestNotPending(RequestRefused):
    pass


class RequestExpired(RequestRefused):
    pass


class RequestStale(RequestRefused):
    """The change was edited (or re-baselined) after the request: its approval no longer matches."""


class PolicyInvalid(RequestRefused):
    pass


class SelfDecisionRefused(PermissionRefused):
    """Nobody decides their own request, superusers included."""


# -- policy ----------------------------------------------------------------------------------------


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


def _approvals_required_for(targets: list[str], environment: str) -> int | None:
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
        raise services.NotFound(f"no target system {target_name!r}")
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
            environment=services._environment(),
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
    executed REAPPLY request (an approved release is an approval to apply it again, DOMAIN §5);
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


# -- checks shared by creation and execution -------------------------------------------------------


def _reason_required(reason: str) -> str:
    if not reason or not reason.strip():
        raise RequestRefused("a reason is required")
    return reason.strip()


@dataclass
class _Checked:
    change: ChangeDefinition
    #: The checksum the ledger records for the change (ACCEPT_CHECKSUM re-baselines it).
    recorded_checksum: str
    #: The target systems the action touches (an undo cascades over later changes).
    targets: list[str]


def _action_check(*, kind: str, change_id: str, actor: Actor, pipeline: Pipeline, environment: str) -> _Checked:
    """Refuse, with the reason, an action that cannot be done now or by this actor."""
    subject = services._subject(change_id, pipeline=pipeline)
    targets = [subject.change.target]
    if kind == Kind.UNDO:
        targets = list(dict.fromkeys(s.change.target for s in services.undo_cascade(change_id, pipeline=pipeline)))
    elif kind in RESOLUTIONS:
        services.fix_check(subject, RESOLUTIONS[kind])
    elif kind == Kind.SKIP:
        services.skip_check(subject)
    elif kind == Kind.REAPPLY:
        services.reapply_check(subject)
    elif kind == Kind.ACCEPT_CHECKSUM:
        services.accept_checksum_check(subject)
    elif kind == Kind.APPLY:
        if not subject.change.applies_in(environment):
            raise RequestRefused(f"{change_id} does not run in {environment}")
        action, why = _resolve(subject.change, subject.strategy, subject.state)
        if action != Action.APPLY:
            raise RequestRefused(f"{change_id} has nothing to apply (next action {action.value}: {why})")
    else:
        raise RequestRefused(f"unknown request kind {kind!r}")
    for target in targets:
        target_operate_check(actor, target)
    return _Checked(subject.change, subject.state.checksum if subject.state else "", targets)


def _binding_check(request: ChangeRequest, pipeline: Pipeline) -> ChangeDefinition:
    """The request still matches the code and the ledger it was made for."""
    change = pipeline.by_id.get(request.change_id)
    if change is None:
        raise RequestStale(f"request #{request.pk}: {request.change_id} is no longer in the pipeline")
    if change.checksum != request.checksum:
        raise RequestStale(
            f"request #{request.pk} was made for checksum {request.checksum[:12]} of {request.change_id}, "
            f"which is now {change.checksum[:12]}: the change was edited after the request"
        )
    if request.kind == Kind.ACCEPT_CHECKSUM:
        recorded = ChangeState.objects.filter(change_id=request.change_id).values_list("checksum", flat=True).first() or ""
        if recorded != request.recorded_checksum:
            raise RequestStale(f"request #{request.pk}: the recorded checksum of {request.change_id} changed since the request")
    return change


def _request_targets(request: ChangeRequest, pipeline: Pipeline) -> list[str]:
    """The target systems a request acts on: its change's, and for an undo those of the later
    changes it cascades over (an approver decides for each of them)."""
    targets = [request.target_system.name]
    if request.kind == Kind.UNDO:
        try:
            targets += [s.change.target for s in services.undo_cascade(request.change_id, pipeline=pipeline)]
        except services.FlamingockError:
            pass  # the undo is no longer possible; its execution says why
    return list(dict.fromkeys(targets))


def _ref(request: ChangeRequest, change: ChangeDefinition | None = None) -> ChangeRef:
    return ChangeRef(
        id=request.change_id,
        stage=change.stage if change else "",
        order=change.order if change else "",
        target=request.target_system.name,
        checksum=request.checksum,
    )


def _audit(event: str, request: ChangeRequest, actor: Actor, *, change: ChangeDefinition | None = None, reason: str = "", **details) -> None:
    audit_record(
        event=event,
        actor=actor,
        environment=request.environment,
        change=_ref(request, change),
        reason=reason,
        details={"request_id": request.pk, "kind": request.kind, **details},
    )


def _locked(request_id: int) -> ChangeRequest:
    request = ChangeRequest.objects.select_for_update().filter(pk=request_id).first()
    if request is None:
        raise services.NotFound(f"no request #{request_id}")
    return request


def _expired(request: ChangeRequest, now=None) -> bool:
    return request.expires_at <= (now or timezone.now())


def _requester(request: ChangeRequest) -> Actor:
    return Actor(name=request.requester_name, user_id=request.requester_id, via=request.source.lower())


def _is_requester(request: ChangeRequest, actor: Actor) -> bool:
    if request.requester_id is not None:
        return actor.user_id == request.requester_id
    return actor.user_id is None and actor.name == request.requester_name


# -- requests --------------------------------------------------------------------------------------


def request_create(*, kind: str, change_id: str, actor: Actor, reason: str, source: str = Run.Source.UI) -> ChangeRequest:
    """Request a governed action on a change; approved at once (and recorded so) where the policy
    requires no approval. Refuses, writing nothing, what could not be done or by this actor."""
    reason = _reason_required(reason)
    environment = services._environment()
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise services.PipelineInvalid(pipeline)
    checked = _action_check(kind=kind, change_id=change_id, actor=actor, pipeline=pipeline, environment=environment)
    change = checked.change
    target = TargetSystem.objects.filter(name=change.target).first()
    if target is None:
        services.target_systems_sync()
        target = TargetSystem.objects.get(name=change.target)
    required = _approvals_required_for(checked.targets, environment) or 0
    generation = ChangeState.objects.filter(change_id=change_id).values_list("applied_count", flat=True).first() or 0
    now = timezone.now()
    try:
        with transaction.atomic():
            pending = (
                ChangeRequest.objects.select_for_update()
                .filter(environment=environment, change_id=change_id, kind=kind, status=Status.PENDING)
                .first()
            )
            if pending is not None:
                if pending.checksum == change.checksum and not _expired(pending, now):
                    raise RequestDuplicate(f"request #{pending.pk} for the {kind} of {change_id} is already pending")
                # Superseded: the change was edited since, or the request outlived its expiry.
                _expire(pending, why="superseded by a new request")
            if kind == Kind.APPLY:
                approved = apply_approval(change_id=change_id, checksum=change.checksum, environment=environment, generation=generation, now=now)
                if approved is not None:
                    raise RequestDuplicate(f"request #{approved.pk} already approves the apply of {change_id}")
            request = ChangeRequest.objects.create(
                kind=kind,
                change_id=change_id,
                checksum=change.checksum,
                recorded_checksum=checked.recorded_checksum if kind == Kind.ACCEPT_CHECKSUM else "",
                environment=environment,
                target_system=target,
                reason=reason,
                source=source,
                requester_id=actor.user_id,
                requester_name=actor.name,
                required_approvals=required,
                applied_generation=generation,
                expires_at=now + timedelta(hours=settings.FLAMINGOCK_REQUEST_EXPIRY_HOURS),
            )
            _audit(
                "request.created",
                request,
                actor,
                change=change,
                reason=reason,
                required_approvals=required,
                recorded_checksum=request.recorded_checksum,
                targets=checked.targets,
                expires_at=request.expires_at.isoformat(),
            )
            if required == 0:
                request.status, request.decided_at = Status.APPROVED, now
                request.save(update_fields=["status", "decided_at"])
                policy = f"the policy of {target.name} in {environment} requires no approval"
                _audit("request.approved", request, POLICY, change=change, reason=policy, automatic=True, approvals=0, required=0, final=True)
            else:
                transaction.on_commit(lambda: _notify_request(request.pk))
    except IntegrityError:
        # Another request for the same change and kind was made at the same moment.
        raise RequestDuplicate(f"a request for the {kind} of {change_id} is already pending")
    return request


@dataclass
class Submission:
    """What ``request_submit`` did: performed (``run``), or left a request awaiting approval."""

    request: ChangeRequest | None
    run: Run | None

    @property
    def awaiting_approval(self) -> bool:
        return self.request is not None and self.request.status == Status.PENDING


def request_submit(*, kind: str, change_id: str, actor: Actor, reason: str, source: str, inline: bool = True) -> Submission:
    """Request or perform: what the acting subcommands (and the admin's action forms) call.

    Where nothing governs the change's target system (an unprotected environment without a policy
    row) the action is performed directly, as before approvals existed; where the policy requires
    no approval, the request is approved automatically, recorded, and executed; otherwise the
    request awaits its approvers.
    """
    pipeline = pipeline_load()
    subject = services._subject(change_id, pipeline=pipeline)
    targets = [subject.change.target]
    if kind == Kind.UNDO:
        targets = [s.change.target for s in services.undo_cascade(change_id, pipeline=pipeline)]
    required = _approvals_required_for(targets, services._environment())
    if required is None and kind != Kind.APPLY:
        return Submission(None, _perform(kind=kind, change_id=change_id, actor=actor, reason=reason, source=source))
    request = request_create(kind=kind, change_id=change_id, actor=actor, reason=reason, source=source)
    if request.status == Status.APPROVED and kind != Kind.APPLY:
        run = request_execute(request_id=request.pk, inline=inline)
        request.refresh_from_db()
        return Submission(request, run)
    return Submission(request, None)


def _perform(*, kind: str, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    if kind == Kind.UNDO:
        return services.change_undo(change_id=change_id, actor=actor, reason=reason, source=source)
    if kind in RESOLUTIONS:
        return services.change_fix(change_id=change_id, resolution=RESOLUTIONS[kind], actor=actor, reason=reason, source=source)
    if kind == Kind.SKIP:
        return services.change_skip(change_id=change_id, actor=actor, reason=reason, source=source)
    if kind == Kind.REAPPLY:
        return services.change_reapply(change_id=change_id, actor=actor, reason=reason, source=source)
    if kind == Kind.ACCEPT_CHECKSUM:
        return services.change_accept_checksum(change_id=change_id, actor=actor, reason=reason, source=source)
    raise RequestRefused(f"unknown request kind {kind!r}")


def request_approve(*, request_id: int, actor: Actor, comment: str = "", inline: bool = False) -> ChangeRequest:
    """Record one approval; the last one needed approves the request, which is then executed (on a
    worker, or with ``inline`` in this process)."""
    request = _request_decide(request_id=request_id, actor=actor, decision=Approval.Decision.APPROVE, comment=comment)
    if request.status == Status.APPROVED and request.kind != Kind.APPLY:
        try:
            request_execute(request_id=request.pk, inline=inline)
        except (services.FlamingockError, PermissionRefused) as refused:
            raise RequestRefused(f"request #{request.pk} is approved, but executing it was refused: {refused}") from refused
        request.refresh_from_db()
    return request


def request_reject(*, request_id: int, actor: Actor, comment: str = "") -> ChangeRequest:
    """Reject a request: one rejection by an approver ends it."""
    return _request_decide(request_id=request_id, actor=actor, decision=Approval.Decision.REJECT, comment=comment)


def _request_decide(*, request_id: int, actor: Actor, decision: str, comment: str) -> ChangeRequest:
    comment = (comment or "").strip()
    pipeline = pipeline_load()
    with transaction.atomic():
        request = _locked(request_id)
        if request.status != Status.PENDING:
            raise RequestNotPending(f"request #{request.pk} is {request.status}: only a pending request can be decided")
        if _expired(request):
            raise RequestExpired(f"request #{request.pk} expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        for target in _request_targets(request, pipeline):
            target_approve_check(actor, target)
        if _is_requester(request, actor):
            raise SelfDecisionRefused(f"{actor.name} requested #{request.pk}: nobody decides their own request (cancel it instead)")
        if request.approvals.filter(approver_id=actor.user_id).exists():
            raise RequestRefused(f"{actor.name} has already decided request #{request.pk}")
        change = pipeline.by_id.get(request.change_id)
        if decision == Approval.Decision.APPROVE:
            change = _binding_check(request, pipeline)
        Approval.objects.create(
            request=request,
            approver_id=actor.user_id,
            approver_name=actor.name,
            requester_id=request.requester_id,
            decision=decision,
            checksum=request.checksum,
            comment=comment,
        )
        approvals = request.approvals.filter(decision=Approval.Decision.APPROVE).count()
        now = timezone.now()
        if decision == Approval.Decision.REJECT:
            request.status, request.decided_at = Status.REJECTED, now
            request.status_reason = f"rejected by {actor.name}" + (f": {comment}" if comment else "")
        elif approvals >= request.required_approvals:
            request.status, request.decided_at = Status.APPROVED, now
        request.save(update_fields=["status", "decided_at", "status_reason"])
        event = "request.rejected" if decision == Approval.Decision.REJECT else "request.approved"
        _audit(
            event,
            request,
            actor,
            change=change,
            reason=comment,
            approvals=approvals,
            required=request.required_approvals,
            final=request.status != Status.PENDING,
        )
    return request


def request_cancel(*, request_id: int, actor: Actor, comment: str = "") -> ChangeRequest:
    """Withdraw a request that has not been executed; only its requester may."""
    comment = (comment or "").strip()
    with transaction.atomic():
        request = _locked(request_id)
        if not _is_requester(request, actor):
            raise PermissionRefused(f"{actor.name} may not cancel request #{request.pk}: only its requester ({request.requester_name}) can")
        if request.status not in (Status.PENDING, Status.APPROVED) or request.run_id is not None:
            raise RequestNotPending(f"request #{request.pk} is {request.status}: only a request not yet executed can be cancelled")
        request.status = Status.CANCELLED
        request.status_reason = f"cancelled by {actor.name}" + (f": {comment}" if comment else "")
        request.save(update_fields=["status", "status_reason"])
        _audit("request.cancelled", request, actor, reason=comment)
    return request


def request_comment(*, request_id: int, actor: Actor, body: str) -> RequestComment:
    """Add a remark to a request: its requester, and the target's operators and approvers, may."""
    body = (body or "").strip()
    if not body:
        raise RequestRefused("a comment cannot be empty")
    with transaction.atomic():
        request = _locked(request_id)
        target = request.target_system.name
        may = _is_requester(request, actor) or (
            actor.user_id is not None and (actor_may(actor, OPERATE, target) or actor_may(actor, APPROVE, target))
        )
        if not may:
            raise PermissionRefused(f"{actor.name} may not comment on request #{request.pk}")
        comment = RequestComment.objects.create(request=request, author_id=actor.user_id, author_name=actor.name, body=body)
        _audit("request.commented", request, actor, reason=body, comment_id=comment.pk)
    return comment


def _expire(request: ChangeRequest, *, why: str) -> None:
    request.status = Status.EXPIRED
    request.status_reason = why
    request.save(update_fields=["status", "status_reason"])
    _audit("request.expired", request, EXPIRY, reason=why, expires_at=request.expires_at.isoformat())


def requests_expire(*, now=None) -> list[int]:
    """Expire this environment's requests past their expiry that are pending, or approved and not
    executed (a periodic task); settle those whose run ended. Returns the ids expired."""
    now = now or timezone.now()
    environment = services._environment()
    expired = []
    due = ChangeRequest.objects.filter(environment=environment, expires_at__lte=now, run__isnull=True, status__in=[Status.PENDING, Status.APPROVED])
    for pk in list(due.values_list("pk", flat=True)):
        with transaction.atomic():
            request = _locked(pk)
            if request.status not in (Status.PENDING, Status.APPROVED) or request.run_id is not None or not _expired(request, now):
                continue
            _expire(request, why=f"expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        expired.append(pk)
    # A run ended without its finishing step (its worker died, it was cancelled while queued).
    for request in ChangeRequest.objects.filter(environment=environment, status=Status.APPROVED, run__isnull=False).select_related("run"):
        if request.run.finished:
            request_settle(run=request.run)
    return expired


def request_execute(*, request_id: int, inline: bool = False) -> Run:
    """Execute an approved request as its requester: queue its run for a worker, or run it here.

    The request must still match the code and the ledger, and its requester must still be allowed
    to act; the run checks the change's state again under the lock.
    """
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise services.PipelineInvalid(pipeline)
    with transaction.atomic():
        request = _locked(request_id)
        if request.kind == Kind.APPLY:
            raise RequestRefused(f"request #{request.pk} approves an apply: the next run of the pipeline applies {request.change_id}")
        if request.status != Status.APPROVED or request.run_id is not None:
            raise RequestNotPending(f"request #{request.pk} is {request.status}: only an approved request not yet executed can be executed")
        if _expired(request):
            raise RequestExpired(f"request #{request.pk} expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        _binding_check(request, pipeline)
        requester = _requester(request)
        _action_check(kind=request.kind, change_id=request.change_id, actor=requester, pipeline=pipeline, environment=request.environment)
        parameters = {"request_id": request.pk, "approval": approval_evidence(request)}
        if request.kind in RESOLUTIONS:
            parameters["resolution"] = RESOLUTIONS[request.kind]
        start = services.run_create if inline else services.run_queue
        run = start(
            actor=requester,
            source=request.source,
            kind=RUN_KINDS[request.kind],
            change_id=request.change_id,
            reason=request.reason,
            parameters=parameters,
        )
        request.run = run
        request.save(update_fields=["run"])
    if inline:
        run = services.run_execute(run_id=run.id)
    return run


def request_settle(*, run: Run) -> None:
    """Mark the requests a finished run executed: its own request, and the approved APPLY requests
    of the changes a pipeline run applied."""
    now = timezone.now()
    request_id = (run.parameters or {}).get("request_id")
    if request_id:
        status = Status.EXECUTED if run.status == Run.Status.SUCCEEDED else Status.FAILED
        ChangeRequest.objects.filter(pk=request_id, status=Status.APPROVED).update(
            status=status, executed_at=now, run=run, status_reason=run.status_reason if status == Status.FAILED else ""
        )
    if run.kind == Run.Kind.PIPELINE:
        applied = {row["change_id"] for row in run.results if row.get("result") in ("APPLIED", "RECONCILED")}
        approved = list(
            ChangeRequest.objects.filter(kind=Kind.APPLY, status=Status.APPROVED, environment=run.environment, change_id__in=applied).values_list(
                "pk", "change_id", "checksum"
            )
        )
        if not approved:
            return
        recorded = dict(ChangeState.objects.filter(change_id__in={change_id for _, change_id, _ in approved}).values_list("change_id", "checksum"))
        executed = [pk for pk, change_id, checksum in approved if recorded.get(change_id) == checksum]
        ChangeRequest.objects.filter(pk__in=executed, status=Status.APPROVED).update(status=Status.EXECUTED, executed_at=now, run=run)


# -- lists -----------------------------------------------------------------------------------------


def requests_visible(*, actor: Actor) -> QuerySet[ChangeRequest]:
    """The requests ``actor`` may see: all with the global view permission; otherwise their own and
    those on target systems they operate or approve."""
    requests = ChangeRequest.objects.select_related("target_system", "run").order_by("-created_at", "-id")
    if actor.user_id is None:
        return requests if not environment_protected() else requests.none()
    user = actor_user(actor)
    if user is None:
        return requests.none()
    if user.has_perm("changes_app.view_changerequest"):
        return requests
    operated = target_systems_for(user=user, permission=OPERATE)
    approved = target_systems_for(user=user, permission=APPROVE)
    return requests.filter(Q(target_system__in=operated) | Q(target_system__in=approved) | Q(requester=user))


def requests_awaiting(*, actor: Actor) -> QuerySet[ChangeRequest]:
    """Pending requests of this environment that ``actor`` may decide and has not decided."""
    user = actor_user(actor)
    if user is None:
        return ChangeRequest.objects.none()
    approvable = target_systems_for(user=user, permission=APPROVE)
    return (
        ChangeRequest.objects.filter(
            environment=services._environment(), status=Status.PENDING, expires_at__gt=timezone.now(), target_system__in=approvable
        )
        .exclude(requester=user)
        .exclude(approvals__approver=user)
        .select_related("target_system")
        .order_by("created_at", "id")
    )


def request_as_dict(request: ChangeRequest) -> dict:
    decisions = list(request.approvals.all())
    return {
        "id": request.pk,
        "kind": request.kind,
        "change_id": request.change_id,
        "checksum": request.checksum,
        "recorded_checksum": request.recorded_checksum or None,
        "environment": request.environment,
        "target": request.target_system.name,
        "status": request.status,
        "status_reason": request.status_reason,
        "requester": request.requester_name,
        "reason": request.reason,
        "required_approvals": request.required_approvals,
        "approved_by": [d.approver_name for d in decisions if d.decision == Approval.Decision.APPROVE],
        "rejected_by": [d.approver_name for d in decisions if d.decision == Approval.Decision.REJECT],
        "created_at": request.created_at,
        "decided_at": request.decided_at,
        "expires_at": request.expires_at,
        "run_id": str(request.run_id) if request.run_id else None,
    }


# -- notifications ---------------------------------------------------------------------------------


def _notify_request(request_id: int) -> None:
    from .notifications import request_notify

    request_notify(request_id=request_id)
