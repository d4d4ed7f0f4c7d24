"""Periodic tasks of the audit trail: thin adapters over integrity services."""

import logging

from celery import shared_task
from django.core.mail import mail_admins

from audit_app.integrity import audit_verify, checkpoint_write, verification_record
from audit_app.services import Actor

logger = logging.getLogger("flamingock.audit")


@shared_task(name="flamingock.audit_verify", ignore_result=True)
def audit_verify_task() -> bool:
    """Recompute the whole chain, store and audit the outcome, and alert when it is broken."""
    report = audit_verify()
    verification_record(report, actor=Actor(name="service:audit-verifier", via="schedule"))
    if not report.ok:
        logger.error("audit trail verification FAILED at entry #%s: %s", report.problem.seq, report.problem.message)
        mail_admins(
            "Flamingock: the audit trail does not verify", f"First broken entry: #{report.problem.seq}\n{report.problem.message}", fail_silently=True
        )
    return report.ok


@shared_task(name="flamingock.audit_checkpoint", ignore_result=True)
def audit_checkpoint_task() -> int | None:
    """Sign the chain head, so that removing the newest entries is detected too."""
    checkpoint = checkpoint_write(reason="schedule")
    return checkpoint.seq if checkpoint else None
