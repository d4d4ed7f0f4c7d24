"""Periodic tasks of the audit trail: thin adapters over integrity services."""

import logging

from celery import shared_task
from django.core.mail import mail_admins

from audit_app.integrity import audit_verify, checkpoint_write, verdict_log, verdict_record
from audit_app.services import Actor
from audit_app.verify_requests import VERIFY_REQUEST_TASK, verify_request_run

logger = logging.getLogger("flamingock.audit")


@shared_task(name="flamingock.audit_verify", ignore_result=True)
def audit_verify_task() -> bool:
    """Recompute the whole chain and deliver the verdict (the log, and a mail to the admins when it
    is broken) before recording it: a trail that refuses the ``audit.verified`` entry (closed by a
    foreign row) still gets its alert, which then says the verdict was not recorded."""
    report = audit_verify()
    verdict_log(report)
    if not report.ok:
        mail_admins(
            "Flamingock: the audit trail does not verify", f"First broken entry: #{report.problem.seq}\n{report.problem.message}", fail_silently=True
        )
    not_recorded = verdict_record(report, actor=Actor(name="service:audit-verifier", via="schedule"))
    if not_recorded:
        mail_admins("Flamingock: the audit verification could not be recorded", not_recorded, fail_silently=True)
    return report.ok


@shared_task(name="flamingock.audit_checkpoint", ignore_result=True)
def audit_checkpoint_task() -> int | None:
    """Sign the chain head, so that removing the newest entries is detected too."""
    checkpoint = checkpoint_write(reason="schedule")
    return checkpoint.seq if checkpoint else None


@shared_task(name=VERIFY_REQUEST_TASK, ignore_result=True)
def audit_verify_request_task(request_id: int) -> bool | None:
    """A verification someone asked for ("Verify now"): progress on its row, the verdict delivered and
    recorded naming who asked (audit_app.verify_requests)."""
    request = verify_request_run(request_id=request_id)
    return request.verification.ok if request is not None and request.verification is not None else None
