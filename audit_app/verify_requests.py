"""Verification on request ("Verify now" in the admin, ``POST /api/v1/audit/verify/``), and which
verification and signed checkpoint cover an entry.

A request is recorded in the trail (``audit.verify_requested``, naming who asked) in the same
transaction as its :class:`VerificationRequest` row, and queued by name to a worker once that commits.
The worker recomputes the chain, reporting how many entries it has checked on the row, delivers the
verdict as the daily task does, and records it (``audit.verified``, naming the request and who asked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.conf import settings
from django.core.mail import mail_admins
from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from audit_app.integrity import audit_verify, verdict_log, verification_record
from audit_app.models import AuditCheckpoint, AuditEntry, Verification, VerificationRequest
from audit_app.services import audit_record
from audit_app.types import Actor, TrailClosed

logger = logging.getLogger("flamingock.audit")

#: The Celery task that runs a request (audit_app.tasks), queued by its name.
VERIFY_REQUEST_TASK = "flamingock.audit_verify_request"
#: The actor of the worker's verdict; the person who asked is named in its details.
VERIFIER = Actor(name="service:audit-verifier", via="request")
#: A request queued or running for longer than this is not waited for: a new one is queued.
STALE_AFTER = timezone.timedelta(hours=1)
#: Checkpoints read at once for a page of entries (:func:`coverage`).
CHECKPOINTS_READ = 200
#: Progress is written at most this often (seconds).
PROGRESS_EVERY = 0.5


class VerifyRefused(Exception):
    """The user may not ask for a verification (``audit_app.verify_chain``)."""


def verify_request(*, user, actor: Actor) -> tuple[VerificationRequest, bool]:
    """Ask for a verification of the whole chain now, for ``user`` (who must hold
    ``audit_app.verify_chain``). Returns the request and whether it is new: while one is queued or
    running, asking again joins it (and writes nothing), so that repeated clicks queue one job."""
    if not user.has_perm("audit_app.verify_chain"):
        raise VerifyRefused(f"{actor.name} may not verify the audit chain (audit_app.verify_chain)")
    using = router.db_for_write(VerificationRequest)
    with transaction.atomic(using=using):
        pending = (
            VerificationRequest.objects.using(using)
            .select_for_update()
            .filter(
                status__in=[VerificationRequest.Status.QUEUED, VerificationRequest.Status.RUNNING], requested_at__gte=timezone.now() - STALE_AFTER
            )
            .order_by("-id")
            .first()
        )
        if pending is not None:
            return pending, False
        request = VerificationRequest.objects.using(using).create(requested_by=actor.name, requested_by_user_id=actor.user_id)
        entry = audit_record(
            event="audit.verify_requested",
            actor=actor,
            environment=settings.FLAMINGOCK_ENVIRONMENT,
            details={"request": request.pk, "mode": "full"},
            using=using,
        )
        request.request_entry_id = entry.pk
        request.save(update_fields=["request_entry_id"])
        transaction.on_commit(lambda: _task_send(VERIFY_REQUEST_TASK, args=[request.pk]), using=using)
    return request, True


def _task_send(name: str, *, args: list) -> None:
    """Queue a task by its name on the deployment's Celery app (eager mode still applies)."""
    app = import_string(getattr(settings, "FLAMINGOCK_CELERY_APP", "flamingock_site.celery.app"))
    if name not in app.tasks:
        app.loader.import_default_modules()
    app.tasks[name].apply_async(args=args)


def verify_request_run(*, request_id: int) -> VerificationRequest | None:
    """The worker's part: verify, report progress on the request's row, deliver and record the verdict."""
    using = router.db_for_write(VerificationRequest)
    with transaction.atomic(using=using):
        request = VerificationRequest.objects.using(using).select_for_update().filter(pk=request_id).first()
        if request is None or request.status not in (VerificationRequest.Status.QUEUED, VerificationRequest.Status.RUNNING):
            return request  # unknown, or already done (a redelivered message)
        request.status, request.started_at = VerificationRequest.Status.RUNNING, timezone.now()
        request.save(update_fields=["status", "started_at"])
    reporter = _ProgressReporter(request.pk, using=using)
    try:
        report = audit_verify(progress=reporter)
    except Exception as error:
        VerificationRequest.objects.using(using).filter(pk=request.pk).update(
            status=VerificationRequest.Status.FAILED, finished_at=timezone.now(), error=f"{type(error).__name__}: {error}"
        )
        raise
    verdict_log(report)
    if not report.ok:
        mail_admins(
            "Flamingock: the audit trail does not verify",
            f"First broken entry: #{report.problem.seq}\n{report.problem.message}\nRequested by {request.requested_by}.",
            fail_silently=True,
        )
    asked = {"request": request.pk, "requested_by": request.requested_by, "request_entry": request.request_entry_id}
    verification, not_recorded = None, ""
    try:
        verification = verification_record(report, actor=VERIFIER, details=asked)
    except (TrailClosed, DatabaseError) as error:
        # The verdict stands (logged and mailed above) even when the trail refuses its entry.
        not_recorded = f"verdict not recorded: {error}"
        logger.error("audit trail %s", not_recorded)
    # An intact chain was checked to its end; a broken one stopped short of the total progress gave.
    total = None if report.ok else VerificationRequest.objects.using(using).filter(pk=request.pk).values_list("total", flat=True).first()
    VerificationRequest.objects.using(using).filter(pk=request.pk).update(
        status=VerificationRequest.Status.DONE,
        finished_at=timezone.now(),
        total=report.entries_checked if total is None else total,
        entries_checked=report.entries_checked,
        verification=verification,
        error=not_recorded,
    )
    if not_recorded:
        mail_admins("Flamingock: the audit verification could not be recorded", not_recorded, fail_silently=True)
    request.refresh_from_db(using=using)
    return request


class _ProgressReporter:
    """Writes (checked, total) on the request's row, at most every :data:`PROGRESS_EVERY` seconds.

    On PostgreSQL the verification streams the trail over this process's connection, which cannot
    run another statement meanwhile: progress goes over a connection of its own, opened per write
    (the verification may fork, and a child must not inherit an open one)."""

    def __init__(self, pk: int, *, using: str):
        self.pk, self.using, self.last = pk, using, 0.0

    def __call__(self, checked: int, total: int) -> None:
        now = time.monotonic()
        if checked and checked < total and now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        if connections[self.using].vendor != "postgresql":
            VerificationRequest.objects.using(self.using).filter(pk=self.pk).update(entries_checked=checked, total=total)
            return
        connection = connections.create_connection(self.using)
        try:
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(VerificationRequest._meta.db_table)
                cursor.execute(f"UPDATE {table} SET entries_checked = %s, total = %s WHERE id = %s", [checked, total, self.pk])
        finally:
            connection.close()


def verify_request_status(request: VerificationRequest) -> dict:
    """What the progress view and the API say about a request."""
    verification = request.verification
    done = request.status == VerificationRequest.Status.DONE
    data = {
        "id": request.pk,
        "status": request.status,
        "status_label": str(request.get_status_display()),
        "requested_by": request.requested_by,
        "requested_at": request.requested_at.isoformat() if request.requested_at else None,
        "request_entry_id": request.request_entry_id,
        "entries_checked": request.entries_checked,
        "total": request.total,
        "percent": min(100, round(100 * request.entries_checked / request.total)) if request.total else (100 if done else 0),
        "finished": request.status in (VerificationRequest.Status.DONE, VerificationRequest.Status.FAILED),
        "ok": verification.ok if verification is not None else None,
        "verification_id": verification.pk if verification is not None else None,
        "head_seq": verification.head_seq if verification is not None else None,
        "first_broken_seq": verification.first_broken_seq if verification is not None else None,
        "problem": verification.problem if verification is not None else "",
        "error": request.error,
    }
    if verification is not None:
        data["message"] = (
            f"intact: {verification.entries_checked} entries checked up to #{verification.head_seq}"
            if verification.ok
            else f"BROKEN at #{verification.first_broken_seq}: {verification.problem}"
        )
    elif request.status == VerificationRequest.Status.FAILED:
        data["message"] = f"the verification failed to run: {request.error}"
    elif request.status == VerificationRequest.Status.RUNNING:
        data["message"] = f"{request.entries_checked} of {request.total or '?'} entries checked"
    else:
        data["message"] = "queued: waiting for a worker"
    return data


# -- what covers an entry -----------------------------------------------------------------------------


def _covers(verification: Verification, seq: int) -> bool:
    """A verification covers its range; one recorded before ranges were (no ``from_seq``) covers the
    chain from its start when it was a full one."""
    start = verification.from_seq or (1 if verification.mode == "full" else None)
    return start is not None and verification.head_seq is not None and start <= seq <= verification.head_seq


def coverage(seqs: Iterable[int], *, using: str | None = None) -> dict[int, dict]:
    """For each sequence number: the latest verification whose range includes it and the first
    signed checkpoint at or after it (``None`` for either when there is none). A constant number of
    queries for a page: the verifications are few and the checkpoints read in one range."""
    seqs = sorted({seq for seq in seqs if seq})
    using = using or router.db_for_read(AuditEntry)
    result: dict[int, dict] = {seq: {"verification": None, "checkpoint": None} for seq in seqs}
    if not seqs:
        return result
    lo, hi = seqs[0], seqs[-1]
    # The verifications that can cover any of them, newest first; the first that covers a seq wins.
    verifications = list(Verification.objects.using(using).filter(head_seq__gte=lo).order_by("-performed_at", "-id")[:50])
    # Checkpoints from the lowest seq on, in one read; past the page's highest seq only the first is
    # needed (when many checkpoints lie between, the first at or after the highest is read apart).
    checkpoints = list(AuditCheckpoint.objects.using(using).filter(seq__gte=lo).order_by("seq", "id")[:CHECKPOINTS_READ])
    if len(checkpoints) == CHECKPOINTS_READ and checkpoints[-1].seq < hi:
        first_after = AuditCheckpoint.objects.using(using).filter(seq__gte=hi).order_by("seq", "id").first()
        checkpoints += [first_after] if first_after is not None else []
    for seq in seqs:
        result[seq]["verification"] = next((v for v in verifications if _covers(v, seq)), None)
        result[seq]["checkpoint"] = next((c for c in checkpoints if c.seq >= seq), None)
    return result
