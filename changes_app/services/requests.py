"""Requests and approvals (docs/semantics.md §9): governed actions as requests bound to a change's id, checksum
and environment, decided by N distinct approvers, never by their requester.

Every transition takes the same five steps: a transaction, the request's row locked, its current
status checked (a named error refuses, nothing is written), the audit entry in the same
transaction, and the side effects (notifications, queued runs) once it commits. An approved
request is executed by the existing single-change runs (undo, fix, skip, re-apply, re-baseline),
on a worker (``runs.run_queue``) or, for the command line, in this process. An approved APPLY
request is executed by the next run of the pipeline: the resolver's approval hook lets its change
through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.dispatch import receiver
from django.utils import timezone

from audit_app.models import ChangeState
from audit_app.services import Actor, ChangeRef, audit_record
from changes_app.conf import current_environment
from changes_app.definitions import ChangeDefinition
from changes_app.engine.actions import ACTIONS
from changes_app.errors import (
    ActionRefused,
    FlamingockError,
    NotFound,
    PipelineInvalid,
    RequestDuplicate,
    RequestExpired,
    RequestNotPending,
    RequestRefused,
    RequestStale,
    require_reason,
    typed_text,
)
from changes_app.governance import visibility
from changes_app.governance.permissions import (
    APPROVE,
    OPERATE,
    PermissionRefused,
    SelfDecisionRefused,
    actor_may,
    actor_user,
    environment_protected,
    target_approve_check,
    target_operate_check,
    target_systems_for,
)
from changes_app.governance.policy import apply_approval, approval_evidence, approvals_required_for, break_glass_check
from changes_app.governance.refusals import refusals_recorded
from changes_app.models import Approval, ChangeRequest, RequestComment, Run, TargetSystem
from changes_app.pipeline.discovery import Pipeline, pipeline_load
from changes_app.pipeline.rules import adopt_check, adoption_alias, adoption_digest, adoption_target, subject_of, undo_cascade
from changes_app.services.actions import change_act
from changes_app.services.break_glass import BYPASSABLE, BreakGlass, BreakGlassInvalid, break_glass_used
from changes_app.services.catalogue import target_systems_sync
from changes_app.services.notifications import request_notify
from changes_app.services.runs import run_create, run_execute, run_finished, run_queue

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status

#: Who approves a request automatically where the policy requires no approval.
POLICY = Actor(name="service:approval-policy", via="policy")
#: Who expires requests (a periodic task).
EXPIRY = Actor(name="service:request-expiry", via="schedule")


# -- requests on a subject other than one change (fleet runs) -------------------------------------


@dataclass(frozen=True)
class SubjectKind:
    """A request kind whose subject is not a change (a fleet run: ``fleets.governance``), registered
    once at start-up. ``binding`` raises ``RequestStale`` when the subject moved since the request;
    ``execute`` performs the approved request (and marks it EXECUTED); ``rejected`` is told of a
    rejection. Approvers decide with the request's target system's ``approve`` permission."""

    binding: Callable[[ChangeRequest], None]
    execute: Callable[[ChangeRequest], object]
    rejected: Callable[[ChangeRequest], None]


#: Request kind -> its subject's behaviour; kinds not here are actions on a change (``engine.actions``).
SUBJECT_KINDS: dict[str, SubjectKind] = {}


def subject_kind_register(kind: str, subject: SubjectKind) -> None:
    if kind in SUBJECT_KINDS and SUBJECT_KINDS[kind] != subject:
        raise ValueError(f"request kind {kind!r} is already registered")
    SUBJECT_KINDS[kind] = subject


def subject_request_open(
    *, kind: str, subject_id: str, checksum: str, target: str, actor: Actor, reason: str, source: str, rendered: dict, required: int
) -> ChangeRequest:
    """Open a request of a registered subject kind, ``required`` approvals needed (0: approved at
    once, recorded as the policy's). The caller checked the action and the actor's permission; a
    pending request for the same subject and kind refuses (``RequestDuplicate``)."""
    if kind not in SUBJECT_KINDS:
        raise RequestRefused(f"unknown request kind {kind!r}")
    reason = require_reason(typed_text(reason), error=RequestRefused)
    environment = current_environment()
    target_system = TargetSystem.objects.filter(name=target).first()
    if target_system is None:
        target_systems_sync()
        target_system = TargetSystem.objects.get(name=target)
    now = timezone.now()
    try:
        with transaction.atomic():
            pending = (
                ChangeRequest.objects.select_for_update()
                .filter(environment=environment, change_id=subject_id, kind=kind, status=Status.PENDING)
                .first()
            )
            if pending is not None:
                if not _expired(pending, now):
                    raise RequestDuplicate(f"request #{pending.pk} for the {kind} of {subject_id} is already pending")
                _expire(pending, why="superseded by a new request")
            request = ChangeRequest.objects.create(
                kind=kind,
                change_id=subject_id,
                checksum=checksum,
                environment=environment,
                target_system=target_system,
                reason=reason,
                source=source,
                requester_id=actor.user_id,
                requester_name=actor.name,
                required_approvals=required,
                expires_at=now + timedelta(hours=settings.FLAMINGOCK_REQUEST_EXPIRY_HOURS),
                rendered=rendered,
            )
            _audit(
                "request.created",
                request,
                actor,
                reason=reason,
                required_approvals=required,
                targets=[target],
                expires_at=request.expires_at.isoformat(),
            )
            if required == 0:
                request.status, request.decided_at = Status.APPROVED, now
                request.save(update_fields=["status", "decided_at"])
                policy = f"the policy of {target} in {environment} requires no approval"
                _audit("request.approved", request, POLICY, reason=policy, automatic=True, approvals=0, required=0, final=True)
            else:
                transaction.on_commit(lambda: _notify_request(request.pk))
    except IntegrityError:
        raise RequestDuplicate(f"a request for the {kind} of {subject_id} is already pending")
    return request


# -- checks shared by creation and execution -------------------------------------------------------


@dataclass
class _Checked:
    #: ``None`` for an action on a database (ADOPT: ``_database_check``).
    change: ChangeDefinition | None
    #: The checksum the ledger records for the change (ACCEPT_CHECKSUM re-baselines it).
    recorded_checksum: str
    #: The target systems the action touches (an undo cascades over later changes).
    targets: list[str]
    #: What the request is bound to: the change's checksum, or a database's ``rules.adoption_digest``.
    checksum: str = ""

    def __post_init__(self) -> None:
        self.checksum = self.checksum or (self.change.checksum if self.change is not None else "")


def _database_check(*, change_id: str, actor: Actor) -> _Checked:
    """An action on a database (ADOPT, subject ``django:<alias>``): its rule, the actor's permission
    on the alias's target system, and the recorder rows it covers (docs/django-migrations.md)."""
    alias = adoption_alias(change_id)
    adopt_check(alias)
    target = adoption_target(alias)
    target_operate_check(actor, target)
    return _Checked(None, "", [target], adoption_digest(alias))


def _action_check(*, kind: str, change_id: str, actor: Actor, pipeline: Pipeline, environment: str) -> _Checked:
    """Refuse, with the reason, an action that cannot be done now or by this actor."""
    action = ACTIONS.get(kind)
    if action is None:
        raise RequestRefused(f"unknown request kind {kind!r}")
    if action.subject == "database":
        return _database_check(change_id=change_id, actor=actor)
    subject = subject_of(change_id, pipeline=pipeline)
    targets = [subject.change.target]
    try:
        if action.run_kind == Run.Kind.UNDO:
            targets = list(dict.fromkeys(s.change.target for s in undo_cascade(change_id, pipeline=pipeline)))
        else:
            action.check(subject, action, environment)
    except ActionRefused as refused:
        if kind != Kind.APPLY:
            raise
        raise RequestRefused(str(refused)) from None
    for target in targets:
        target_operate_check(actor, target)
    return _Checked(subject.change, subject.state.checksum if subject.state else "", targets)


def _binding_check(request: ChangeRequest, pipeline: Pipeline) -> ChangeDefinition | None:
    """The request still matches the code and the ledger it was made for."""
    if request.kind in SUBJECT_KINDS:
        SUBJECT_KINDS[request.kind].binding(request)
        return None
    if request.kind == Kind.ADOPT:  # a database's adoption: bound to the recorder rows it covers
        if adoption_digest(adoption_alias(request.change_id)) != request.checksum:
            raise RequestStale(f"request #{request.pk}: the recorder rows of {request.change_id} changed since the request")
        return None
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
            targets += [s.change.target for s in undo_cascade(request.change_id, pipeline=pipeline)]
        except FlamingockError:
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
        raise NotFound(f"no request #{request_id}")
    return request


def _expired(request: ChangeRequest, now=None) -> bool:
    # A break-glass review never lapses: late, it is overdue (``break_glass.reviews_overdue``).
    return request.kind != Kind.REVIEW and request.expires_at <= (now or timezone.now())


def _requester(request: ChangeRequest) -> Actor:
    return Actor(name=request.requester_name, user_id=request.requester_id, via=request.source.lower())


def _is_requester(request: ChangeRequest, actor: Actor) -> bool:
    if request.requester_id is not None:
        return actor.user_id == request.requester_id
    return actor.user_id is None and actor.name == request.requester_name


# -- requests --------------------------------------------------------------------------------------


@refusals_recorded("request {kind}", object="change {change_id}")
def request_create(
    *, kind: str, change_id: str, actor: Actor, reason: str, source: str = Run.Source.UI, break_glass: BreakGlass | None = None
) -> ChangeRequest:
    """Request a governed action on a change; approved at once (and recorded so) where the policy
    requires no approval, or by a ``break_glass`` use of ``actor`` (docs/break-glass.md). Refuses,
    writing nothing, what could not be done or by this actor."""
    if break_glass is not None:
        if kind not in BYPASSABLE:
            raise BreakGlassInvalid(f"break-glass does not apply to {kind}: only to {', '.join(sorted(BYPASSABLE))}")
        reason = break_glass.reason
    reason = require_reason(reason, error=RequestRefused)
    environment = current_environment()
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    checked = _action_check(kind=kind, change_id=change_id, actor=actor, pipeline=pipeline, environment=environment)
    change = checked.change
    target_name = change.target if change is not None else checked.targets[0]
    target = TargetSystem.objects.filter(name=target_name).first()
    if target is None:
        target_systems_sync()
        target = TargetSystem.objects.get(name=target_name)
    required = approvals_required_for(checked.targets, environment) or 0
    if break_glass is not None:
        required = break_glass_check(actor=actor, targets=checked.targets, environment=environment)
    generation = ChangeState.objects.filter(change_id=change_id).values_list("applied_count", flat=True).first() or 0
    now = timezone.now()
    try:
        with transaction.atomic():
            pending = (
                ChangeRequest.objects.select_for_update()
                .filter(environment=environment, change_id=change_id, kind=kind, status=Status.PENDING)
                .first()
            )
            # An emergency is not held up by a request that awaits its approvers: both stay on record.
            if pending is not None and break_glass is None:
                if pending.checksum == checked.checksum and not _expired(pending, now):
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
                checksum=checked.checksum,
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
                break_glass=break_glass is not None,
                incident=break_glass.incident if break_glass is not None else "",
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
                **({"break_glass": True, "incident": request.incident} if break_glass is not None else {}),
            )
            if break_glass is not None:
                # The use is the approval: recorded as the requester's, bound like any other.
                request.status, request.decided_at = Status.APPROVED, now
                request.save(update_fields=["status", "decided_at"])
                _audit(
                    "request.approved",
                    request,
                    actor,
                    change=change,
                    reason=reason,
                    break_glass=True,
                    incident=request.incident,
                    approvals=0,
                    required=required,
                    final=True,
                )
                if kind == Kind.APPLY:
                    # No run of its own: the next run of the pipeline applies it.
                    break_glass_used(request=request)
            elif required == 0:
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


def request_submit(
    *, kind: str, change_id: str, actor: Actor, reason: str, source: str, inline: bool = True, break_glass: BreakGlass | None = None
) -> Submission:
    """Request or perform: what the acting subcommands (and the admin's action forms) call.

    Where nothing governs the change's target system (an unprotected environment without a policy
    row) the action is performed directly, as before approvals existed; where the policy requires
    no approval, the request is approved automatically, recorded, and executed; otherwise the
    request awaits its approvers. With ``break_glass`` the use approves the request, which is
    executed at once (docs/break-glass.md).
    """
    if break_glass is not None:
        request = request_create(kind=kind, change_id=change_id, actor=actor, reason=reason, source=source, break_glass=break_glass)
        if kind == Kind.APPLY:
            return Submission(request, None)
        run = request_execute(request_id=request.pk, inline=inline)
        request.refresh_from_db()
        return Submission(request, run)
    pipeline = pipeline_load()
    subject = subject_of(change_id, pipeline=pipeline)
    targets = [subject.change.target]
    if kind == Kind.UNDO:
        targets = [s.change.target for s in undo_cascade(change_id, pipeline=pipeline)]
    required = approvals_required_for(targets, current_environment())
    if required is None and kind != Kind.APPLY:
        return Submission(None, change_act(kind=kind, change_id=change_id, actor=actor, reason=reason, source=source))
    request = request_create(kind=kind, change_id=change_id, actor=actor, reason=reason, source=source)
    if request.status == Status.APPROVED and kind != Kind.APPLY:
        run = request_execute(request_id=request.pk, inline=inline)
        request.refresh_from_db()
        return Submission(request, run)
    return Submission(request, None)


@refusals_recorded("request.approve", object="request #{request_id}")
def request_approve(*, request_id: int, actor: Actor, comment: str = "", inline: bool = False) -> ChangeRequest:
    """Record one approval; the last one needed approves the request, which is then executed (on a
    worker, or with ``inline`` in this process)."""
    request = _request_decide(request_id=request_id, actor=actor, decision=Approval.Decision.APPROVE, comment=comment)
    if request.status == Status.APPROVED and request.kind in SUBJECT_KINDS:
        try:
            SUBJECT_KINDS[request.kind].execute(request)
        except (FlamingockError, PermissionRefused) as refused:
            raise RequestRefused(f"request #{request.pk} is approved, but executing it was refused: {refused}") from refused
        request.refresh_from_db()
    elif request.status == Status.APPROVED and request.kind not in (Kind.APPLY, Kind.REVIEW):
        try:
            request_execute(request_id=request.pk, inline=inline)
        except (FlamingockError, PermissionRefused) as refused:
            raise RequestRefused(f"request #{request.pk} is approved, but executing it was refused: {refused}") from refused
        request.refresh_from_db()
    return request


@refusals_recorded("request.reject", object="request #{request_id}")
def request_reject(*, request_id: int, actor: Actor, comment: str = "") -> ChangeRequest:
    """Reject a request: one rejection by an approver ends it."""
    request = _request_decide(request_id=request_id, actor=actor, decision=Approval.Decision.REJECT, comment=comment)
    if request.kind in SUBJECT_KINDS:
        SUBJECT_KINDS[request.kind].rejected(request)
    return request


def _request_decide(*, request_id: int, actor: Actor, decision: str, comment: str) -> ChangeRequest:
    comment = typed_text(comment)
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
        # A review approves what was done, whatever the code became since.
        if decision == Approval.Decision.APPROVE and request.kind != Kind.REVIEW:
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
            roles=_roles_held(actor),
        )
    return request


def _roles_held(actor: Actor) -> list[str]:
    """The role groups ``actor`` holds as they decide: the evidence pack's approver roles
    (docs/compliance.md, "changes.csv")."""
    return sorted(Group.objects.filter(user__id=actor.user_id).values_list("name", flat=True)) if actor.user_id is not None else []


@refusals_recorded("request.cancel", object="request #{request_id}")
def request_cancel(*, request_id: int, actor: Actor, comment: str = "") -> ChangeRequest:
    """Withdraw a request that has not been executed; only its requester may."""
    comment = typed_text(comment)
    with transaction.atomic():
        request = _locked(request_id)
        if not _is_requester(request, actor):
            raise PermissionRefused(f"{actor.name} may not cancel request #{request.pk}: only its requester ({request.requester_name}) can")
        if request.kind == Kind.REVIEW:
            raise PermissionRefused(f"{actor.name} may not withdraw break-glass review #{request.pk}: it stays open until two others decide it")
        if request.status not in (Status.PENDING, Status.APPROVED) or request.run_id is not None:
            raise RequestNotPending(f"request #{request.pk} is {request.status}: only a request not yet executed can be cancelled")
        request.status = Status.CANCELLED
        request.status_reason = f"cancelled by {actor.name}" + (f": {comment}" if comment else "")
        request.save(update_fields=["status", "status_reason"])
        _audit("request.cancelled", request, actor, reason=comment)
    return request


def requests_withdraw(*, subject_id: str, actor: Actor, why: str) -> list[int]:
    """Cancel the requests of ``subject_id`` (a fleet run's ``fleet:<id>``) that are still pending, or
    approved and not executed, because their subject ended (the caller checked ``actor``); each is
    audited as ``request.cancelled``. Returns their ids."""
    withdrawn = []
    with transaction.atomic():
        for request in ChangeRequest.objects.select_for_update().filter(
            change_id=subject_id, status__in=[Status.PENDING, Status.APPROVED], run__isnull=True
        ):
            request.status = Status.CANCELLED
            request.status_reason = why
            request.save(update_fields=["status", "status_reason"])
            _audit("request.cancelled", request, actor, reason=why)
            withdrawn.append(request.pk)
    return withdrawn


@refusals_recorded("request.comment", object="request #{request_id}")
def request_comment(*, request_id: int, actor: Actor, body: str) -> RequestComment:
    """Add a remark to a request: its requester, and the target's operators and approvers, may."""
    body = typed_text(body)
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
    environment = current_environment()
    expired = []
    due = ChangeRequest.objects.filter(
        environment=environment, expires_at__lte=now, run__isnull=True, status__in=[Status.PENDING, Status.APPROVED]
    ).exclude(kind=Kind.REVIEW)
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
        raise PipelineInvalid(pipeline)
    with transaction.atomic():
        request = _locked(request_id)
        if request.kind == Kind.APPLY:
            raise RequestRefused(f"request #{request.pk} approves an apply: the next run of the pipeline applies {request.change_id}")
        if request.kind in SUBJECT_KINDS:
            raise RequestRefused(f"request #{request.pk} is executed when it is approved ({request.get_kind_display()})")
        if request.status != Status.APPROVED or request.run_id is not None:
            raise RequestNotPending(f"request #{request.pk} is {request.status}: only an approved request not yet executed can be executed")
        if _expired(request):
            raise RequestExpired(f"request #{request.pk} expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        _binding_check(request, pipeline)
        requester = _requester(request)
        _action_check(kind=request.kind, change_id=request.change_id, actor=requester, pipeline=pipeline, environment=request.environment)
        action = ACTIONS[request.kind]
        parameters = {"request_id": request.pk, "approval": approval_evidence(request), **action.parameters}
        start = run_create if inline else run_queue
        run = start(
            actor=requester,
            source=request.source,
            kind=action.run_kind,
            change_id=request.change_id,
            reason=request.reason,
            parameters=parameters,
        )
        request.run = run
        request.save(update_fields=["run"])
        if request.break_glass:
            break_glass_used(request=request, run=run)
    if inline:
        run = run_execute(run_id=run.id)
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
    """The requests ``actor`` may see (``governance.visibility``); the local operator of an
    unprotected environment sees them all."""
    requests = ChangeRequest.objects.select_related("target_system", "run").order_by("-created_at", "-id")
    if actor.user_id is None:
        return requests if not environment_protected() else requests.none()
    user = actor_user(actor)
    if user is None:
        return requests.none()
    return visibility.requests_visible(user, requests)


def requests_awaiting(*, actor: Actor) -> QuerySet[ChangeRequest]:
    """Pending requests of this environment that ``actor`` may decide and has not decided."""
    user = actor_user(actor)
    if user is None:
        return ChangeRequest.objects.none()
    approvable = target_systems_for(user=user, permission=APPROVE)
    return (
        ChangeRequest.objects.filter(environment=current_environment(), status=Status.PENDING, target_system__in=approvable)
        .filter(Q(expires_at__gt=timezone.now()) | Q(kind=Kind.REVIEW))
        .exclude(requester=user)
        .exclude(approvals__approver=user)
        .select_related("target_system")
        .order_by("created_at", "id")
    )


# -- notifications ---------------------------------------------------------------------------------


def _notify_request(request_id: int) -> None:
    request_notify(request_id=request_id)


@receiver(run_finished)
def _settle_on_run_finished(sender, *, run: Run, **kwargs) -> None:
    """The run's requests are settled when it ends; a failure is left to the expiry task."""
    request_settle(run=run)
