"""Break-glass (docs/break-glass.md, docs/semantics.md "Break-glass"): in an incident, a holder of the
``break_glass`` permission performs a governed action without prior approval. The use is the
approval: the action's request is created APPROVED, bound to the change's id, checksum and
environment like any other (``requests.request_create``), and passes the same gates (the resolver's
``ApprovalGate`` for an apply, ``request_execute`` for the other actions). Each use writes
``break_glass.used`` and opens a REVIEW request that two people other than its user must approve
within ``FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS``; a late review writes ``review.overdue`` once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit_app.services import Actor, ChangeRef, audit_record
from changes_app.conf import current_environment
from changes_app.errors import RequestRefused, typed_text
from changes_app.governance.policy import REVIEW_APPROVALS
from changes_app.models import ChangeRequest, Run
from changes_app.services.notifications import request_notify, review_overdue_notify

Kind = ChangeRequest.Kind
Status = ChangeRequest.Status

#: The actions a break-glass use may approve: applying, undoing and the single-change fixes. Not
#: ADOPT (adopting a database's history is no incident response) and never a REVIEW.
BYPASSABLE = frozenset({Kind.APPLY, Kind.UNDO, Kind.REAPPLY, Kind.MARK_APPLIED, Kind.MARK_ROLLED_BACK, Kind.SKIP, Kind.ACCEPT_CHECKSUM})

REASON_MAX = 2000
INCIDENT_MAX = 200
#: An incident reference is a ticket key or URL-like label: "INC-1234", "PD#Q1W2E3", "jira:OPS-9".
_INCIDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/#@+-]*")
#: Control characters other than tab and newline have no place in a typed reason.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

#: Who writes ``review.overdue`` (a periodic task).
OVERDUE = Actor(name="service:break-glass-review", via="schedule")


class BreakGlassInvalid(RequestRefused):
    """A break-glass use without a usable reason or incident reference; nothing was written."""


@dataclass(frozen=True)
class BreakGlass:
    """What a person gives to use break-glass, checked and redacted."""

    reason: str
    incident: str


def break_glass_of(*, reason: str | None, incident: str | None) -> BreakGlass:
    """Check what a person typed: a reason (at most ``REASON_MAX`` characters, no control
    characters) and an incident reference (at most ``INCIDENT_MAX`` printable characters); both pass
    the redaction of typed text (``errors.typed_text``) before they are stored or audited."""
    # A browser sends a textarea's line breaks as CRLF: a multi-line reason is not a control character.
    reason, incident = (reason or "").replace("\r\n", "\n").strip(), (incident or "").strip()
    if not reason:
        raise BreakGlassInvalid("break-glass needs a reason")
    if not incident:
        raise BreakGlassInvalid("break-glass needs an incident reference")
    if len(reason) > REASON_MAX:
        raise BreakGlassInvalid(f"the break-glass reason is longer than {REASON_MAX} characters")
    if _CONTROL.search(reason):
        raise BreakGlassInvalid("the break-glass reason contains control characters")
    if len(incident) > INCIDENT_MAX or not _INCIDENT.fullmatch(incident):
        raise BreakGlassInvalid(f"the incident reference must be at most {INCIDENT_MAX} characters of letters, digits, spaces and . _ : / # @ + -")
    return BreakGlass(reason=typed_text(reason), incident=typed_text(incident))


def break_glass_review_hours() -> float:
    """Hours two reviewers have to approve a break-glass use (``FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS``, 72)."""
    return float(getattr(settings, "FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS", 72))


def _ref(request: ChangeRequest) -> ChangeRef:
    return ChangeRef(id=request.change_id, stage="", order="", target=request.target_system.name, checksum=request.checksum)


def break_glass_used(*, request: ChangeRequest, run: Run | None = None) -> ChangeRequest:
    """Record the use behind an approved break-glass ``request`` and open its REVIEW; called inside
    the transaction that starts the action (the run's creation, or for an apply the request's).
    Returns the REVIEW request."""
    now = timezone.now()
    due = now + timedelta(hours=break_glass_review_hours())
    actor = Actor(name=request.requester_name, user_id=request.requester_id, via=request.source.lower())
    review = ChangeRequest.objects.create(
        kind=Kind.REVIEW,
        change_id=request.change_id,
        checksum=request.checksum,
        environment=request.environment,
        target_system=request.target_system,
        reason=request.reason,
        source=request.source,
        requester_id=request.requester_id,
        requester_name=request.requester_name,
        required_approvals=max(REVIEW_APPROVALS, request.required_approvals),
        applied_generation=request.applied_generation,
        # A review does not lapse: it stays open, overdue, until it is decided.
        expires_at=due,
        due_at=due,
        incident=request.incident,
        reviewed_request=request,
    )
    change = _ref(request)
    audit_record(
        event="request.created",
        actor=actor,
        environment=review.environment,
        change=change,
        reason=review.reason,
        details={
            "request_id": review.pk,
            "kind": review.kind,
            "required_approvals": review.required_approvals,
            "reviewed_request_id": request.pk,
            "incident": review.incident,
            "due_at": due.isoformat(),
        },
    )
    audit_record(
        event="break_glass.used",
        actor=actor,
        environment=request.environment,
        change=change,
        reason=request.reason,
        details={
            "action": request.kind,
            "change_id": request.change_id,
            "checksum": request.checksum,
            "environment": request.environment,
            "reason": request.reason,
            "incident": request.incident,
            "review_request_id": review.pk,
            **({"run_id": str(run.id)} if run is not None else {}),
        },
    )
    transaction.on_commit(lambda: request_notify(request_id=review.pk))
    return review


def reviews_overdue(*, now=None) -> list[int]:
    """Write ``review.overdue`` once for each pending REVIEW of this environment past its due time
    (a periodic task) and tell its reviewers; returns the ids flagged."""
    now = now or timezone.now()
    due = ChangeRequest.objects.filter(
        environment=current_environment(), kind=Kind.REVIEW, status=Status.PENDING, due_at__lte=now, overdue_at__isnull=True
    )
    flagged = []
    for pk in list(due.values_list("pk", flat=True)):
        with transaction.atomic():
            review = ChangeRequest.objects.select_for_update().select_related("target_system").filter(pk=pk).first()
            if review is None or review.status != Status.PENDING or review.overdue_at is not None:
                continue
            review.overdue_at = now
            review.save(update_fields=["overdue_at"])
            audit_record(
                event="review.overdue",
                actor=OVERDUE,
                environment=review.environment,
                change=_ref(review),
                reason=f"break-glass review #{review.pk} was due at {review.due_at:%Y-%m-%d %H:%M:%S} UTC",
                details={"review_request_id": review.pk, "change_id": review.change_id, "due_at": review.due_at.isoformat()},
            )
            transaction.on_commit(lambda pk=pk: review_overdue_notify(request_id=pk))
        flagged.append(pk)
    return flagged


def reviews_open(*, requests: QuerySet[ChangeRequest], now=None) -> tuple[QuerySet[ChangeRequest], QuerySet[ChangeRequest]]:
    """The pending break-glass reviews among ``requests`` (already filtered to what the reader may
    see): those still in time and those overdue."""
    now = now or timezone.now()
    pending = requests.filter(environment=current_environment(), kind=Kind.REVIEW, status=Status.PENDING).order_by("due_at", "id")
    return pending.filter(due_at__gt=now), pending.filter(due_at__lte=now)
