"""E-mail to the people who can act: a request awaiting their decision, a run that
ended BLOCKED or FAILED. Sent after the commit of what they are about; a mail server that refuses
is logged, never allowed to change an outcome."""

from __future__ import annotations

import functools
import logging
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mass_mail
from django.db import transaction
from django.dispatch import receiver

from audit_app.models import ChangeState
from audit_app.redaction import redact
from changes_app.governance.permissions import APPROVE, OPERATE, users_with
from changes_app.models import ChangeRecord, ChangeRequest, Run, TargetSystem
from changes_app.services.runs import run_finished

logger = logging.getLogger("flamingock.notifications")

#: Per-change results of a run that a person has to look at.
_ATTENTION = {"FAILED", "ROLLED_BACK", "BLOCKED", "NOT_PERMITTED"}


def never_raises(notify):
    """A notification that fails is logged: it runs after a commit, where nothing can be undone."""

    @functools.wraps(notify)
    def wrapper(**kwargs) -> int:
        try:
            return notify(**kwargs)
        except Exception:
            logger.exception("%s(%s) failed", notify.__name__, kwargs)
            return 0

    return wrapper


def admin_url(path: str) -> str:
    return settings.FLAMINGOCK_BASE_URL.rstrip("/") + path


def mail_each(subject: str, body: str, recipients: list[str]) -> int:
    """Send one message per recipient; its subject and body pass the redaction whole, so no reason,
    comment or error quoted in a mail carries a secret (the stored texts already do not)."""
    if not recipients:
        return 0
    subject, body = redact(subject), redact(body)
    # One message per recipient: nobody learns who else was told.
    return send_mass_mail([(subject, body, None, [address]) for address in recipients], fail_silently=False)


def addresses_of(users) -> list[str]:
    return sorted({user.email for user in users if user.email})


@never_raises
def request_notify(*, request_id: int) -> int:
    """Tell the approvers of a pending request's target system (not its requester) that it awaits
    their decision. Returns the number of messages sent."""
    request = ChangeRequest.objects.select_related("target_system").filter(pk=request_id).first()
    if request is None or request.status != ChangeRequest.Status.PENDING:
        return 0
    approvers = users_with(permission=APPROVE, target=request.target_system).exclude(pk=request.requester_id or 0)
    subject = f"[flamingock {request.environment}] request #{request.pk} awaits your decision: {request.get_kind_display()} of {request.change_id}"
    body = "\n".join(
        [
            f"{request.requester_name} requests: {request.get_kind_display()} of {request.change_id}",
            f"target system: {request.target_system.name}, environment: {request.environment}",
            f"reason: {request.reason}",
            f"checksum: {request.checksum}",
            f"approvals needed: {request.required_approvals}",
            f"expires: {request.expires_at:%Y-%m-%d %H:%M} UTC",
            "",
            f"decide in the admin: {admin_url(f'/admin/changes_app/changerequest/{request.pk}/change/')}",
            f'or: python manage.py flamingock approve {request.pk} --comment "..."  (or reject)',
        ]
    )
    return mail_each(subject, body, addresses_of(approvers))


@never_raises
def review_overdue_notify(*, request_id: int) -> int:
    """Tell the approvers of a target system, and the person who used break-glass, that a
    break-glass review is overdue (docs/break-glass.md). Returns the number of messages sent."""
    review = ChangeRequest.objects.select_related("target_system").filter(pk=request_id, kind=ChangeRequest.Kind.REVIEW).first()
    if review is None or review.status != ChangeRequest.Status.PENDING:
        return 0
    people = list(users_with(permission=APPROVE, target=review.target_system).exclude(pk=review.requester_id or 0))
    people += list(get_user_model().objects.filter(pk=review.requester_id or 0, is_active=True))
    count = review.approvals.filter(decision="APPROVE").count()
    subject = f"[flamingock {review.environment}] OVERDUE break-glass review #{review.pk}: {review.change_id}"
    body = "\n".join(
        [
            f"{review.requester_name} used break-glass on {review.change_id} (incident {review.incident}).",
            f"The review was due at {review.due_at:%Y-%m-%d %H:%M} UTC and has {count} of {review.required_approvals} approval(s).",
            f"reason: {review.reason}",
            "",
            f"review in the admin: {admin_url(f'/admin/changes_app/changerequest/{review.pk}/change/')}",
            f'or: python manage.py flamingock approve {review.pk} --comment "..."',
        ]
    )
    return mail_each(subject, body, addresses_of(people))


@never_raises
def run_notify(*, run_id: uuid.UUID) -> int:
    """Tell the operators of the target systems a BLOCKED or FAILED run stopped at. Returns the
    number of messages sent."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None or run.status not in (Run.Status.BLOCKED, Run.Status.FAILED):
        return 0
    stopped = [row for row in run.results if row.get("result") in _ATTENTION]
    change_ids = {row["change_id"] for row in stopped} | ({run.change_id} if run.change_id else set())
    target_names = set(ChangeRecord.objects.filter(change_id__in=change_ids).values_list("target", flat=True))
    target_names |= set(ChangeState.objects.filter(change_id__in=change_ids).values_list("target", flat=True))
    recipients: set[str] = set()
    for target in TargetSystem.objects.filter(name__in=target_names):
        recipients.update(addresses_of(users_with(permission=OPERATE, target=target)))
    subject = f"[flamingock {run.environment}] {run.get_kind_display().lower()} run {run.status}" + (f": {run.change_id}" if run.change_id else "")
    lines = [f"run {run.id} ({run.get_kind_display()}, started by {run.actor} via {run.get_source_display()}) ended {run.status}."]
    if run.status_reason:
        lines.append(f"why: {run.status_reason}")
    for row in stopped:
        lines.append(
            f"  {row['change_id']}: {row['result']}"
            + (f" - {row.get('error') or row.get('reason')}" if row.get("error") or row.get("reason") else "")
        )
    lines += ["", f"see: {admin_url(f'/admin/changes_app/run/{run.id}/change/')}", "and: python manage.py flamingock issues"]
    return mail_each(subject, "\n".join(lines), sorted(recipients))


@receiver(run_finished)
def _notify_on_run_finished(sender, *, run: Run, **kwargs) -> None:
    """The people who can act hear of a run that ended BLOCKED or FAILED, once it commits."""
    if run.status in (Run.Status.BLOCKED, Run.Status.FAILED):
        transaction.on_commit(lambda: run_notify(run_id=run.id))
