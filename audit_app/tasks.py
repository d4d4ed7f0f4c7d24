"""Periodic tasks of the audit trail: thin adapters over integrity services."""

import logging

from flamingock_site.celery import app

logger = logging.getLogger("flamingock.audit")


@app.task(name="flamingock.audit_verify", ignore_result=True)
def audit_verify_task() -> bool:
    """Recompute the whole chain, store and audit the outcome, and alert when it is broken."""
    from django.core.mail import mail_admins

    from .integrity import audit_verify, verification_record
    from .services import Actor

    report = audit_verify()
    verification_record(report, actor=Actor(name="service:audit-verifier", via="schedule"))
    if not report.ok:
        logger.error("audit trail verification FAILED at entry #%s: %s", report.problem.seq, report.problem.message)
        mail_admins(
            "Flamingock: the audit trail does not verify", f"First broken entry: #{report.problem.seq}\n{report.problem.message}", fail_silently=True
        )
    return report.ok


@app.task(name="flamingock.audit_checkpoint", ignore_result=True)
def audit_checkpoint_task() -> int | None:
    """Sign the chain head, so that removing the newest entries is detected too."""
    from .integrity import checkpoint_write

    checkpoint = checkpoint_write(reason="schedule")
    return checkpoint.seq if checkpoint else None
