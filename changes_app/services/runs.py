"""Runs: record, claim, execute under the pipeline lock, finish, reap and cancel.

A run's row exists before its task is queued; its outcome is the ``run_finished`` signal's, which
settles requests and sends notifications without this module knowing of them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, router, transaction
from django.dispatch import Signal
from django.utils import timezone

from audit_app.redaction import redact, redact_data
from audit_app.services import Actor, FenceRefused, StateMoved, audit_record
from changes_app.conf import current_environment
from changes_app.engine.actions import EXECUTORS
from changes_app.engine.executor import Executor, RunAborted, counts_of, results_as_dicts
from changes_app.engine.faults import crashpoint
from changes_app.errors import ActionRefused, FlamingockError, NotFound, PipelineInvalid
from changes_app.governance.permissions import PermissionRefused
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.services.catalogue import catalogue_sync
from changes_app.services.plan import approval_hook
from changes_app.services.queue import task_send
from changes_app.services.workers import (
    NO_CURRENT_WORKER,
    WorkerStale,
    pipeline_current,
    pipeline_current_record,
    worker_process_name,
    worker_stale_check,
    workers_running,
)

logger = logging.getLogger("flamingock.services")

#: Sent once a run has finished (``run``: the saved row), inside the transaction of its last entry.
run_finished = Signal()


def run_create(
    *,
    actor: Actor,
    source: str,
    kind: str = Run.Kind.PIPELINE,
    change_id: str = "",
    reason: str = "",
    parameters: dict | None = None,
    with_task: bool = False,
) -> Run:
    """Record a QUEUED run (before any task is queued for it). ``with_task``: its task will carry
    the run's id (``run_queue``), recorded by the same INSERT."""
    reason = redact(reason)  # typed by a person (the API's and the CLI's run reason): no secret is kept
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    if not with_task:  # run_queue recorded it already, outside its transaction
        _pipeline_record_from_web(source, pipeline)
    # No savepoint: inside run_queue's transaction the run and its entry commit or vanish together.
    with transaction.atomic(savepoint=False):
        run = Run(
            kind=kind,
            source=source,
            environment=current_environment(),
            change_id=change_id,
            reason=reason,
            parameters={**(parameters or {}), **({"os_user": actor.os_user} if actor.os_user else {})},
            started_by_id=actor.user_id,
            actor=actor.name,
            host=actor.host,
            pid=actor.pid,
            pipeline_digest=pipeline.digest,
        )
        if with_task:
            run.task_id = str(run.id)
        run.save(force_insert=True)
        audit_record(
            event="run.queued",
            actor=actor,
            environment=run.environment,
            run_id=run.id,
            reason=reason,
            details={
                "kind": kind,
                "source": source,
                "change_id": change_id,
                "pipeline_digest": pipeline.digest,
                **({"request_id": parameters["request_id"]} if parameters and "request_id" in parameters else {}),
            },
        )
    return run


def _pipeline_record_from_web(source: str, pipeline) -> None:
    """The web process (the admin, the API) is current by definition: queueing a run records its
    pipeline as the environment's current one and mirrors the catalogue. The command line does not:
    a shell whose environment differs from the deploy's must not make the workers stale."""
    if source in (Run.Source.UI, Run.Source.API):
        pipeline_current_record(recorded_by="web", pipeline=pipeline, catalogue=True)


def run_claim(*, run_id: uuid.UUID) -> Run | None:
    """Move a QUEUED run to RUNNING; a duplicate or redelivered execution gets ``None``.

    On PostgreSQL one statement, ``UPDATE ... RETURNING``: the claim and the row it claimed in one
    round trip. Elsewhere (the embedded SQLite, whose round trips stay in the process, or any other
    store Django speaks to, not all of which return rows from an ``UPDATE``) the ORM's update and a
    read of the row."""
    now = timezone.now()
    alias = router.db_for_write(Run)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        claimed = (
            Run.objects.using(alias).filter(pk=run_id, status=Run.Status.QUEUED).update(status=Run.Status.RUNNING, started_at=now, heartbeat_at=now)
        )
        return Run.objects.using(alias).get(pk=run_id) if claimed else None
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(Run._meta.db_table)} SET status = %s, started_at = %s, heartbeat_at = %s WHERE id = %s AND status = %s "
        f"RETURNING {', '.join(quote(field.column) for field in Run._meta.concrete_fields)}"
    )
    claimed = list(Run.objects.db_manager(alias).raw(sql, [Run.Status.RUNNING, now, now, run_id, Run.Status.QUEUED]))
    return claimed[0] if claimed else None


def _executing_actor(run: Run) -> Actor:
    return Actor(name=run.actor, user_id=run.started_by_id, via=run.source.lower(), os_user=run.parameters.get("os_user", ""))


def run_execute(*, run_id: uuid.UUID) -> Run:
    """Claim and execute a queued run in this process. Returns the finished run.

    On a stale worker (docs/semantics.md, Workers) it raises :class:`WorkerStale` before the claim:
    the run stays QUEUED, for its task to be handed back."""
    worker_stale_check()
    pipeline = pipeline_load()
    # The claim, the catalogue and ``run.started`` commit together: one commit before the lock, and
    # a worker that dies inside leaves the run QUEUED (queued again), outside it RUNNING (reaped).
    with transaction.atomic():
        run = run_claim(run_id=run_id)
        if run is None:
            return Run.objects.get(pk=run_id)
        actor = _executing_actor(run)
        skewed = bool(run.pipeline_digest) and pipeline.digest != run.pipeline_digest
        if not skewed:
            if not worker_process_name():
                # In-process (the CLI's run): this process mirrors its catalogue. Workers never do:
                # only the deploy step or the web process records what the current code is.
                catalogue_sync(pipeline=pipeline)
            # The block's last statement: on PostgreSQL the entry goes with the COMMIT, one round trip.
            audit_record(
                event="run.started", actor=actor, environment=run.environment, run_id=run.id, details={"kind": run.kind}, before_commit=lambda: None
            )
    crashpoint("after_claim")
    if skewed:
        return _run_finish(
            run,
            actor,
            Run.Status.ABORTED,
            f"code skew: this worker's pipeline {pipeline.digest[:12]} is not the planned {run.pipeline_digest[:12]}",
            [],
        )
    executor = Executor(run, pipeline=pipeline, lock=lock_backend_shared(), actor=actor, approval_needed=approval_hook())
    holder = executor.acquire()
    if holder is not None:
        reason = f"lock held by {holder.holder} (run {holder.run_id}, {holder.host} pid {holder.pid}, until {holder.expires_at})"
        return _run_finish(run, actor, Run.Status.LOCKED, reason, [])
    try:
        if run.kind == Run.Kind.PIPELINE:
            status, reason = executor.execute_pipeline()
        else:
            status, reason = EXECUTORS[run.kind](executor, run)
    except (FenceRefused, StateMoved) as error:
        status, reason = Run.Status.ABORTED, f"refused by the ledger: {error}"
    except RunAborted as error:
        status, reason = Run.Status.ABORTED, str(error)
    except FlamingockError as error:
        status, reason = Run.Status.FAILED, str(error)
    except Exception as error:
        # A lost database or target connection: stop, say so, leave every change as the ledger says.
        logger.exception("run %s stopped by an unexpected error", run.id)
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
                connection.close()
        status, reason = Run.Status.ABORTED, f"stopped by an unexpected error: {type(error).__name__}: {error}"
    finally:
        try:
            executor.release()
        except Exception:
            logger.exception("run %s: releasing the lock failed; the lease expires on its own", run.id)
        for system in executor.targets.values():
            system.close()
    return _run_finish(run, actor, status, reason, executor.results)


def _run_finish(run: Run, actor: Actor, status: str, reason: str, results) -> Run:
    run.status = status
    # The run is shown by the admin, the API and the CLI: errors in it are redacted like the trail's.
    run.status_reason = redact(reason)
    run.finished_at = timezone.now()
    run.results = redact_data(results_as_dicts(results))
    run.counts = counts_of(results)
    run.progress_done = sum(1 for r in results if r.result in ("APPLIED", "FAILED", "ROLLED_BACK", "RECONCILED", "ALREADY_APPLIED"))
    run.current_change = ""
    run.save(update_fields=["status", "status_reason", "finished_at", "results", "counts", "progress_done", "current_change"])
    event = "run.aborted" if status == Run.Status.ABORTED else "run.finished"
    audit_record(
        event=event, actor=actor, environment=run.environment, run_id=run.id, reason=reason, details={"status": status, "counts": run.counts}
    )
    _run_finished(run)
    return run


def _run_finished(run: Run) -> None:
    """Tell the receivers (requests settle, notifications go out) that ``run`` ended. The run and
    its trail are the truth: no receiver may undo its outcome, so their errors are logged."""
    for receiver, error in run_finished.send_robust(sender=Run, run=run):
        if isinstance(error, Exception):
            logger.error("run %s: %s failed after the run finished: %s", run.id, getattr(receiver, "__name__", receiver), error, exc_info=error)


def run_queue(
    *, actor: Actor, source: str, kind: str = Run.Kind.PIPELINE, change_id: str = "", reason: str = "", parameters: dict | None = None
) -> Run:
    """Record a QUEUED run and queue its task once the row is committed."""
    pipeline = pipeline_load()
    if pipeline.valid:
        _pipeline_record_from_web(source, pipeline)
    with transaction.atomic():
        run = run_create(actor=actor, source=source, kind=kind, change_id=change_id, reason=reason, parameters=parameters, with_task=True)
        transaction.on_commit(lambda: task_send("flamingock.run_execute", args=[str(run.id)], task_id=run.task_id))
    return run


def run_no_current_worker(*, run_id: uuid.UUID, stale: WorkerStale, handbacks: int) -> Run:
    """End a QUEUED run that stale workers handed back ``handbacks`` times and no current worker
    took: ABORTED with reason ``no_current_worker``, naming the stale worker. A run another worker
    claimed meanwhile is left as it is."""
    reason = (
        f"{NO_CURRENT_WORKER}: no worker runs pipeline {stale.environment} ({stale.current[:12]}); "
        f"worker {stale.worker} runs {stale.digest[:12]} and handed the run back {handbacks} time(s)"
    )
    actor = Actor(name=f"worker:{stale.worker}", via="worker")
    return _run_end_queued(run_id=run_id, reason=reason, actor=actor) or Run.objects.get(pk=run_id)


def _run_end_queued(*, run_id, reason: str, actor: Actor, now=None) -> Run | None:
    """ABORTED a run that is still QUEUED (nobody claimed it), audited; None if it was not queued."""
    now = now or timezone.now()
    with transaction.atomic():
        if not Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(status=Run.Status.ABORTED, finished_at=now, status_reason=reason):
            return None
        run = Run.objects.get(pk=run_id)
        audit_record(event="run.aborted", actor=actor, environment=run.environment, run_id=run.id, reason=reason, details={"status": run.status})
    _run_finished(run)
    return run


REAPER = Actor(name="service:reaper", via="schedule")


def runs_reap(*, now=None) -> dict[str, list[str]]:
    """Settle runs whose worker died or whose task the broker lost (a periodic task).

    A RUNNING run whose heartbeat stopped, and that no longer holds the lock, becomes ABORTED:
    the changes it left STARTED show as issues with guidance. A run QUEUED for too long is queued
    again (the claim makes duplicates harmless), and aborted after three attempts; when no live
    worker runs the current pipeline, it is aborted at its second timeout with reason
    ``no_current_worker`` ("no worker runs pipeline X").
    """
    now = now or timezone.now()
    reaped: dict[str, list[str]] = {"aborted": [], "requeued": []}
    holder = lock_backend_shared().holder()
    live_run = holder.run_id if holder is not None and not holder.expired else ""
    dead_after = timedelta(seconds=settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT)
    # Only this environment's runs: the lock that tells a live run from a dead one is this environment's.
    for run in Run.objects.filter(environment=current_environment(), status=Run.Status.RUNNING, heartbeat_at__lt=now - dead_after):
        if str(run.id) == live_run:
            continue
        reason = f"worker died: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC ({run.host} pid {run.pid})"
        with transaction.atomic():
            if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(status=Run.Status.ABORTED, finished_at=now, status_reason=reason):
                continue
            audit_record(event="run.aborted", actor=REAPER, environment=run.environment, run_id=run.id, reason=reason)
        reaped["aborted"].append(str(run.id))
    queued_after = timedelta(seconds=settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT)
    for run in Run.objects.filter(environment=current_environment(), status=Run.Status.QUEUED, created_at__lt=now - queued_after):
        attempts = int(run.parameters.get("requeued", 0))
        current = pipeline_current(environment=run.environment)
        digest = current.digest if current is not None else run.pipeline_digest
        if attempts >= 1 and digest and not workers_running(digest=digest, environment=run.environment):
            reason = (
                f"{NO_CURRENT_WORKER}: no worker runs pipeline {run.environment} ({digest[:12]}); waited since {run.created_at:%Y-%m-%d %H:%M:%S} UTC"
            )
            if _run_end_queued(run_id=run.pk, reason=reason, actor=REAPER, now=now) is not None:
                reaped["aborted"].append(str(run.id))
            continue
        if attempts >= 3:
            reason = "never picked up by a worker after 3 attempts"
            with transaction.atomic():
                if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(status=Run.Status.ABORTED, finished_at=now, status_reason=reason):
                    audit_record(event="run.aborted", actor=REAPER, environment=run.environment, run_id=run.id, reason=reason)
                    reaped["aborted"].append(str(run.id))
            continue
        parameters = {**run.parameters, "requeued": attempts + 1}
        if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(parameters=parameters, created_at=now):
            task_send("flamingock.run_execute", args=[str(run.id)], task_id=run.task_id or str(run.id))
            reaped["requeued"].append(str(run.id))
    return reaped


def run_start(
    *, actor: Actor, source: str, kind: str = Run.Kind.PIPELINE, change_id: str = "", reason: str = "", parameters: dict | None = None
) -> Run:
    """Create and execute a run in this process (the CLI's ``run``)."""
    run = run_create(actor=actor, source=source, kind=kind, change_id=change_id, reason=reason, parameters=parameters)
    return run_execute(run_id=run.id)


def run_cancel(*, run_id: uuid.UUID, actor: Actor) -> Run:
    """Ask a run to stop before its next change; a queued run is aborted at once."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            raise NotFound(f"no run {run_id}")
        if run.finished:
            raise ActionRefused(f"run {run_id} already finished ({run.status})")
        if actor.user_id is not None and actor.user_id != run.started_by_id:
            user = get_user_model().objects.get(pk=actor.user_id)
            if not user.has_perm("changes_app.change_run"):
                raise PermissionRefused(f"{actor.name} may not cancel a run started by {run.actor}")
        run.cancel_requested_at = timezone.now()
        run.cancel_requested_by = actor.name
        fields = ["cancel_requested_at", "cancel_requested_by"]
        if run.status == Run.Status.QUEUED:
            run.status, run.status_reason, run.finished_at = Run.Status.ABORTED, f"cancelled by {actor.name}", timezone.now()
            fields += ["status", "status_reason", "finished_at"]
        run.save(update_fields=fields)
        audit_record(
            event="run.aborted" if run.status == Run.Status.ABORTED else "run.cancel_requested",
            actor=actor,
            environment=run.environment,
            run_id=run.id,
            reason=f"cancelled by {actor.name}",
        )
    return run
