"""Celery tasks: primary keys in, one service call, nothing else.

Each keeps its explicit ``flamingock.*`` name: beat rows and queued messages carry it.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import connections

from changes_app.drift.checks import drift_check, member_drift_record, worker_stale_found
from changes_app.drift.notifications import webhook_deliver, webhooks_due
from changes_app.engine.faults import crashpoint
from changes_app.fleets.drift import members_drift_observe
from changes_app.fleets.services import fleet_member_execute, fleets_reap, members_discover_all
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ChangeRecord
from changes_app.pipeline.discovery import pipeline_load
from changes_app.services import requests_expire, run_execute, runs_reap
from changes_app.services.break_glass import reviews_overdue
from changes_app.services.evidence import evidence_generate, evidence_reap
from changes_app.services.runs import run_no_current_worker
from changes_app.services.workers import (
    WorkerStale,
    worker_handback_countdown,
    worker_handbacks,
    worker_heartbeat_start,
    worker_process_mark,
    worker_stopped,
)
from changes_app.targets.base import target_systems

logger = logging.getLogger("flamingock.services")


def _hand_back(task, stale: WorkerStale) -> bool:
    """A stale worker hands the task back (a retry after a countdown, which any worker may take)
    while the bound allows; False once it is spent."""
    if task.request.called_directly or task.request.retries >= worker_handbacks():
        return False
    logger.warning("%s; handing %s[%s] back (%d of %d)", stale, task.name, task.request.id, task.request.retries + 1, worker_handbacks())
    raise task.retry(countdown=worker_handback_countdown(), max_retries=worker_handbacks())


@shared_task(bind=True, name="flamingock.run_execute", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_execute_task(self, run_id: str) -> str:
    """Execute a queued run (a pipeline, an undo, a fix, a skip...). A duplicate delivery finds the
    run already claimed and does nothing. A stale worker hands it back, then ends it
    (``no_current_worker``) and opens the ``worker.stale`` finding."""
    try:
        status = run_execute(run_id=run_id).status
    except WorkerStale as stale:
        _hand_back(self, stale)
        worker_stale_found(stale=stale, task=self.name, run_id=run_id, handbacks=self.request.retries)
        return run_no_current_worker(run_id=run_id, stale=stale, handbacks=self.request.retries).status
    crashpoint("before_ack")
    return status


@shared_task(name="flamingock.runs_reap", ignore_result=True)
def runs_reap_task() -> dict:
    """Abort runs whose worker died; queue again runs the broker lost; advance fleet runs from their
    rows; fail evidence packs whose worker died."""
    reaped = runs_reap()
    return {**reaped, "fleets": fleets_reap(), "evidence": evidence_reap()}


@shared_task(name="flamingock.fleet_member_execute", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fleet_member_execute_task(member_run_id: int) -> str:
    """Run one member of a fleet run; a duplicate delivery finds the member claimed and does nothing."""
    member = fleet_member_execute(member_run_id=member_run_id)
    return member.status if member is not None else "duplicate"


@shared_task(name="flamingock.fleet_members_discover", ignore_result=True)
def fleet_members_discover_task() -> dict:
    """Discover the members of every target group (member.added, member.removed)."""
    return members_discover_all()


@shared_task(name="flamingock.reviews_overdue", ignore_result=True)
def reviews_overdue_task() -> list[int]:
    """Flag break-glass reviews past their due time (``review.overdue``, once each)."""
    return reviews_overdue()


@shared_task(name="flamingock.evidence_generate", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def evidence_generate_task(pack_id: int) -> str:
    """Make a queued evidence pack; a duplicate delivery finds it claimed and does nothing."""
    return evidence_generate(pack_id=pack_id).status


@shared_task(name="flamingock.requests_expire", ignore_result=True)
def requests_expire_task() -> list[int]:
    """Expire requests past their expiry; settle those whose run ended."""
    return requests_expire()


def _drift_check(task, kind: str) -> dict:
    try:
        report = drift_check(kind=kind)
    except WorkerStale as stale:
        _hand_back(task, stale)
        worker_stale_found(stale=stale, task=task.name, handbacks=task.request.retries)
        return {"checks": [], "stale": stale.worker}
    for delivery_id in webhooks_due():
        webhook_deliver_task.apply_async(args=[delivery_id])
    return {"checks": report.checks, "seen": len(report.seen), "opened": len(report.opened), "resolved": len(report.resolved)}


@shared_task(bind=True, name="flamingock.drift_check", ignore_result=True)
def drift_check_task(self, kind: str = "scheduled") -> dict:
    """Definition and operational drift (every 5 minutes by default); queues overdue webhook retries.
    A stale worker hands it back, then gives it up and opens the ``worker.stale`` finding."""
    return _drift_check(self, kind)


@shared_task(bind=True, name="flamingock.drift_check_live", ignore_result=True)
def drift_check_live_task(self) -> dict:
    """Live drift: every applied change's verify probe against its target (hourly by default)."""
    return _drift_check(self, "live")


@shared_task(bind=True, name="flamingock.fleet_drift_check", ignore_result=True)
def fleet_drift_check_task(self) -> dict:
    """Drift per member: the next batch of the target groups' members (the least recently checked
    first), their findings recorded with one notification per group (every 5 minutes by default)."""
    try:
        report = member_drift_record(observed=members_drift_observe())
    except WorkerStale as stale:
        _hand_back(self, stale)
        worker_stale_found(stale=stale, task=self.name, handbacks=self.request.retries)
        return {"checks": [], "stale": stale.worker}
    return {"checks": report.checks, "seen": len(report.seen), "opened": len(report.opened), "resolved": len(report.resolved)}


@shared_task(name="flamingock.webhook_deliver", ignore_result=True)
def webhook_deliver_task(delivery_id: int) -> None:
    """One attempt of a webhook delivery; a failure queues the next one after its backoff."""
    wait = webhook_deliver(delivery_id=delivery_id)
    if wait is not None:
        webhook_deliver_task.apply_async(args=[delivery_id], countdown=wait)


def worker_named(*, name: str) -> None:
    """This process (and the pool it forks) is the worker ``name``: it never records the current
    pipeline and refuses to judge on stale code."""
    worker_process_mark(name=name)


def worker_started(*, name: str, queue: str = "") -> None:
    """A worker is ready: it publishes its heartbeat with its pipeline digest from now on."""
    worker_heartbeat_start(name=name, queue=queue)


def worker_shutdown(*, name: str) -> None:
    worker_stopped(name=name)


def worker_prepare(*, connect: bool) -> None:
    """Pay once, when a worker starts, what its first run start would pay: discovery of the
    pipeline and the target systems (importing this module imported the run path); with
    ``connect``, the database and the lock store connections too. A failure is logged and left to
    the first run to report."""
    try:
        pipeline_load()
        target_systems()
        backend = lock_backend_shared()
        if connect:
            connections[ChangeRecord.objects.db].ensure_connection()
            backend.holder()
    except Exception:
        logger.warning("worker start: warming up the run path failed; the first run will say why", exc_info=True)
