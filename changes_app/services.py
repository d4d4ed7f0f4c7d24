"""The services every interface calls: CLI, admin, API and Celery tasks hold no business logic.

Each acting service checks permission against the target system, refuses bad input with a named
error before anything changes, then records a Run and does the work under the pipeline lock.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from audit_app.redaction import redact, redact_data
from audit_app.services import Actor, FenceRefused, StateMoved, audit_record, change_states

from . import engine
from .definitions import ChangeDefinition, Strategy
from .discovery import Pipeline, pipeline_load
from .faults import crashpoint
from .governance import PermissionRefused, target_operate_check
from .locks import LockBackend, lock_backend
from .models import ChangeRecord, Run, TargetSystem
from .resolver import Action, Plan, PlanItem, _resolve, plan_build
from .targets import target_systems

logger = logging.getLogger("flamingock.services")


class FlamingockError(Exception):
    """A refusal with a clear message; nothing was changed."""


class PipelineInvalid(FlamingockError):
    def __init__(self, pipeline: Pipeline):
        self.problems = pipeline.problems
        super().__init__(f"the pipeline has {len(pipeline.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in pipeline.problems))


class ActionRefused(FlamingockError):
    pass


class NotFound(FlamingockError):
    pass


__all__ = ["ActionRefused", "FlamingockError", "NotFound", "PermissionRefused", "PipelineInvalid"]


def _environment() -> str:
    return settings.FLAMINGOCK_ENVIRONMENT


def _approval_hook() -> Callable[[ChangeDefinition], str] | None:
    """Where governance (approvals) plugs into the resolver: ``None`` where no policy requires one."""
    from .approvals import approval_gate

    return approval_gate(environment=_environment())


# -- catalogue -------------------------------------------------------------------------------------


def target_systems_sync() -> None:
    """Mirror configured target systems as rows: create, update the connection summary, retire;
    never delete, never touch what is governed (owner, policies, permissions)."""
    configured = target_systems()
    existing = {row.name: row for row in TargetSystem.objects.all()}
    for name, system in configured.items():
        row = existing.get(name)
        values = {"kind": system.kind, "description": system.description, "configuration": system.describe(), "retired_at": None}
        if row is None:
            # Workers starting their first runs together may create the same row: the first one wins.
            TargetSystem.objects.bulk_create([TargetSystem(name=name, **values)], ignore_conflicts=True)
        elif any(getattr(row, key) != value for key, value in values.items()):
            TargetSystem.objects.filter(pk=row.pk).update(**values)
    gone = [row.pk for name, row in existing.items() if name not in configured and row.retired_at is None]
    if gone:
        TargetSystem.objects.filter(pk__in=gone, retired_at__isnull=True).update(retired_at=timezone.now())


#: Per database alias: the pipeline this process last mirrored, and the catalogue's stamp right after.
_catalogue_synced: dict[str, tuple[weakref.ref, tuple]] = {}


def _catalogue_stamp() -> tuple:
    """What changes whenever anyone creates, updates or retires a change record: one query."""
    found = ChangeRecord.objects.aggregate(rows=Count("id"), live=Count("id", filter=Q(removed_at__isnull=True)), synced=Max("synced_at"))
    return found["rows"], found["live"], found["synced"]


def catalogue_sync(*, pipeline: Pipeline | None = None) -> None:
    """Mirror change definitions in the database; changes gone from code keep their row.

    Every run start calls it, so the steady state is cheap: when this process already mirrored
    this very pipeline and nobody touched a change record since (same stamp), the rows are not
    read again. Another code version syncing, a removal, a restored database: the stamp differs
    and the full comparison runs.
    """
    pipeline = pipeline or pipeline_load()
    target_systems_sync()
    alias = ChangeRecord.objects.db
    synced = _catalogue_synced.get(alias)
    if synced is not None and synced[0]() is pipeline and synced[1] == _catalogue_stamp():
        return
    existing = {row.change_id: row for row in ChangeRecord.objects.all()}
    create, update = [], []
    fields = (
        "stage",
        "order",
        "author",
        "target",
        "kind",
        "template",
        "description",
        "path",
        "line",
        "source",
        "checksum",
        "transactional",
        "recovery",
        "environments",
        "has_rollback",
        "has_verify",
        "removed_at",
    )
    now = timezone.now()
    for change in pipeline.by_id.values():
        values = {
            "stage": change.stage,
            "order": change.order,
            "author": change.author,
            "target": change.target,
            "kind": change.kind,
            "template": change.template,
            "description": change.description,
            "path": change.path,
            "line": change.line,
            "source": change.source,
            "checksum": change.checksum,
            "transactional": change.transactional,
            "recovery": change.recovery.value,
            "environments": change.environments,
            "has_rollback": change.has_rollback,
            "has_verify": change.has_verify,
            "removed_at": None,
        }
        row = existing.get(change.id)
        if row is None:
            create.append({"change_id": change.id, **values})
        elif any(getattr(row, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            row.synced_at = now
            update.append(row)
    gone = [row.pk for change_id, row in existing.items() if change_id not in pipeline.by_id and row.removed_at is None]
    if create or update or gone:
        with transaction.atomic():
            if create:
                _catalogue_insert(create, now=now)
            if update:
                ChangeRecord.objects.bulk_update(update, [*fields, "synced_at"], batch_size=500)
            if gone:
                ChangeRecord.objects.filter(pk__in=gone, removed_at__isnull=True).update(removed_at=now)
    _catalogue_synced[alias] = (weakref.ref(pipeline), _catalogue_stamp())


def _catalogue_insert(rows: list[dict], *, now) -> None:
    """New change records. On PostgreSQL a binary ``COPY``: Django's ``bulk_create`` prepared every
    field of every row in Python, most of a first run's catalogue sync (80 ms at 1,000 changes).
    ``COPY`` cannot skip a row that another process inserted meanwhile; then, or on another
    database, the insert that skips conflicts does it."""
    alias = ChangeRecord.objects.db
    connection = connections[alias]
    if connection.vendor == "postgresql":
        fields = [field for field in ChangeRecord._meta.concrete_fields if not field.primary_key]
        values = {**{field.name: field.get_default() for field in fields}, "first_seen_at": now, "synced_at": now}
        columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor, connection.wrap_database_errors:
                with cursor.cursor.copy(f"COPY {ChangeRecord._meta.db_table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types([_COPY_TYPES[field.get_internal_type()] for field in fields])
                    for row in rows:
                        copy.write_row([row.get(field.name, values[field.name]) for field in fields])
            return
        except IntegrityError:
            pass  # another process mirrored some of them first: the savepoint undid the COPY
    ChangeRecord.objects.bulk_create([ChangeRecord(**row) for row in rows], batch_size=500, ignore_conflicts=True)


#: The PostgreSQL type each field of a change record is sent as by ``COPY``.
_COPY_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "IntegerField": "int4",
    "BooleanField": "bool",
    "JSONField": "jsonb",
    "DateTimeField": "timestamptz",
}


# -- lock store and worker start ------------------------------------------------------------------


_lock_backends: dict[tuple, LockBackend] = {}


def _lock_backend() -> LockBackend:
    """The configured lock backend, one per process and configuration: a Redis backend keeps its
    connection pool from one run to the next instead of connecting at every run start."""
    key = (lock_backend, settings.FLAMINGOCK_ENVIRONMENT, settings.REDIS_URL, repr(sorted(settings.FLAMINGOCK_LOCK.items())))
    backend = _lock_backends.get(key)
    if backend is None:
        backend = _lock_backends[key] = lock_backend()
    return backend


def worker_prepare(*, connect: bool) -> None:
    """Pay once, when a worker starts, what its first run start would pay: the imports of the run
    path, discovery of the pipeline and the target systems; with ``connect``, the database and the
    lock store connections too. A failure is logged and left to the first run to report."""
    try:
        from . import approvals, notifications, tasks  # noqa: F401 - imported by every run start

        pipeline_load()
        target_systems()
        backend = _lock_backend()
        if connect:
            connections[ChangeRecord.objects.db].ensure_connection()
            backend.holder()
    except Exception:
        logger.warning("worker start: warming up the run path failed; the first run will say why", exc_info=True)


# -- plan ------------------------------------------------------------------------------------------


def pipeline_plan(*, pipeline: Pipeline | None = None) -> Plan:
    """What the next run would do, from code and ledger; never touches a target."""
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    return plan_build(
        pipeline=pipeline,
        states=change_states(),
        environment=_environment(),
        strategies=engine.strategies_for(pipeline, target_systems()),
        out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
        approval_needed=_approval_hook(),
    )


# -- runs ------------------------------------------------------------------------------------------


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
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    # No savepoint: inside run_queue's transaction the run and its entry commit or vanish together.
    with transaction.atomic(savepoint=False):
        run = Run(
            kind=kind,
            source=source,
            environment=_environment(),
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
    """Claim and execute a queued run in this process. Returns the finished run."""
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
    executor = engine.Executor(run, pipeline=pipeline, lock=_lock_backend(), actor=actor, approval_needed=_approval_hook())
    holder = executor.acquire()
    if holder is not None:
        reason = f"lock held by {holder.holder} (run {holder.run_id}, {holder.host} pid {holder.pid}, until {holder.expires_at})"
        return _run_finish(run, actor, Run.Status.LOCKED, reason, [])
    try:
        if run.kind == Run.Kind.PIPELINE:
            status, reason = executor.execute_pipeline()
        else:
            status, reason = _SINGLE_CHANGE_ACTIONS[run.kind](executor, run)
    except (FenceRefused, StateMoved) as error:
        status, reason = Run.Status.ABORTED, f"refused by the ledger: {error}"
    except engine.RunAborted as error:
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
    run.results = redact_data(engine.results_as_dicts(results))
    run.counts = engine.counts_of(results)
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
    """Settle the requests the run executed and tell the people who can act about a run that ended
    BLOCKED or FAILED. The run and its trail are the truth: neither step may undo its outcome."""
    from .approvals import request_settle
    from .notifications import run_notify

    try:
        request_settle(run=run)
    except Exception:
        logger.exception("run %s: settling its requests failed; the expiry task settles them later", run.id)
    if run.status in (Run.Status.BLOCKED, Run.Status.FAILED):
        transaction.on_commit(lambda: run_notify(run_id=run.id))


def run_queue(
    *, actor: Actor, source: str, kind: str = Run.Kind.PIPELINE, change_id: str = "", reason: str = "", parameters: dict | None = None
) -> Run:
    """Record a QUEUED run and queue its task once the row is committed."""
    from .tasks import run_execute_task

    with transaction.atomic():
        run = run_create(actor=actor, source=source, kind=kind, change_id=change_id, reason=reason, parameters=parameters, with_task=True)
        transaction.on_commit(lambda: run_execute_task.apply_async(args=[str(run.id)], task_id=run.task_id))
    return run


REAPER = Actor(name="service:reaper", via="schedule")


def runs_reap(*, now=None) -> dict[str, list[str]]:
    """Settle runs whose worker died or whose task the broker lost (a periodic task).

    A RUNNING run whose heartbeat stopped, and that no longer holds the lock, becomes ABORTED:
    the changes it left STARTED show as issues with guidance. A run QUEUED for too long is queued
    again (the claim makes duplicates harmless), and aborted after three attempts.
    """
    from .tasks import run_execute_task

    now = now or timezone.now()
    reaped: dict[str, list[str]] = {"aborted": [], "requeued": []}
    holder = _lock_backend().holder()
    live_run = holder.run_id if holder is not None and not holder.expired else ""
    dead_after = timedelta(seconds=settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT)
    # Only this environment's runs: the lock that tells a live run from a dead one is this environment's.
    for run in Run.objects.filter(environment=_environment(), status=Run.Status.RUNNING, heartbeat_at__lt=now - dead_after):
        if str(run.id) == live_run:
            continue
        reason = f"worker died: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC ({run.host} pid {run.pid})"
        with transaction.atomic():
            if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(status=Run.Status.ABORTED, finished_at=now, status_reason=reason):
                continue
            audit_record(event="run.aborted", actor=REAPER, environment=run.environment, run_id=run.id, reason=reason)
        reaped["aborted"].append(str(run.id))
    queued_after = timedelta(seconds=settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT)
    for run in Run.objects.filter(environment=_environment(), status=Run.Status.QUEUED, created_at__lt=now - queued_after):
        attempts = int(run.parameters.get("requeued", 0))
        if attempts >= 3:
            reason = "never picked up by a worker after 3 attempts"
            with transaction.atomic():
                if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(status=Run.Status.ABORTED, finished_at=now, status_reason=reason):
                    audit_record(event="run.aborted", actor=REAPER, environment=run.environment, run_id=run.id, reason=reason)
                    reaped["aborted"].append(str(run.id))
            continue
        parameters = {**run.parameters, "requeued": attempts + 1}
        if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(parameters=parameters, created_at=now):
            run_execute_task.apply_async(args=[str(run.id)], task_id=run.task_id or str(run.id))
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
            from django.contrib.auth import get_user_model

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


# -- single-change actions -------------------------------------------------------------------------


@dataclass
class _Subject:
    change: ChangeDefinition
    state: ChangeState | None
    strategy: Strategy


def _subject(change_id: str, *, pipeline: Pipeline | None = None) -> _Subject:
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    change = pipeline.by_id.get(change_id)
    if change is None:
        raise NotFound(f"no change {change_id!r} in the pipeline")
    strategy = target_systems()[change.target].strategy(transactional=change.transactional)
    return _Subject(change, ChangeState.objects.filter(change_id=change_id).first(), strategy)


def undo_cascade(change_id: str, *, pipeline: Pipeline | None = None) -> list[_Subject]:
    """The changes an undo of ``change_id`` rolls back, newest first; refuses with the reason."""
    pipeline = pipeline or pipeline_load()
    subject = _subject(change_id, pipeline=pipeline)
    if subject.state is None or subject.state.state not in APPLIED_STATES:
        raise ActionRefused(f"{change_id} is not applied (latest state: {subject.state.state if subject.state else 'none'}); nothing to undo")
    stage = next(stage for stage in pipeline.stages if stage.name == subject.change.stage)
    states = {row.change_id: row for row in ChangeState.objects.filter(change_id__in=[c.id for c in stage.changes])}
    targets = target_systems()
    cascade = [
        _Subject(change, states[change.id], targets[change.target].strategy(transactional=change.transactional))
        for change in stage.changes
        if change.order >= subject.change.order and change.id in states and states[change.id].state in APPLIED_STATES
    ]
    cascade.reverse()
    drifted = [s.change.id for s in cascade if s.state.checksum and s.state.checksum != s.change.checksum]
    if drifted:
        raise ActionRefused(f"undo refused while the checksum has drifted: {', '.join(drifted)} (accept the checksum or revert the edit first)")
    missing = [s.change.id for s in cascade if not s.change.has_rollback]
    if missing:
        raise ActionRefused(
            f"undo refused: {', '.join(missing)} has no rollback (undoing {change_id} must undo every later applied change of its stage)"
        )
    return cascade


def _check_operate(actor: Actor, subjects: list[_Subject]) -> None:
    for subject in subjects:
        target_operate_check(actor, subject.change.target)
    # Where a policy governs a target, the action is a request (approvals.request_submit); a
    # direct call must not skip its approvals.
    from .approvals import approvals_required

    governed = sorted({s.change.target for s in subjects if approvals_required(target_name=s.change.target, environment=_environment()) is not None})
    if governed:
        raise ActionRefused(f"approval policies govern {', '.join(governed)} in {_environment()}: request this action instead")


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ActionRefused("a reason is required")
    return reason.strip()


def change_undo(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Roll back ``change_id`` and every later applied change of its stage, then hold them."""
    reason = _require_reason(reason)
    _check_operate(actor, undo_cascade(change_id))
    return run_start(actor=actor, source=source, kind=Run.Kind.UNDO, change_id=change_id, reason=reason)


def fix_check(subject: _Subject, resolution: str) -> str:
    if resolution not in ("applied", "rolled-back"):
        raise ActionRefused("resolution must be 'applied' or 'rolled-back'")
    action, why = _resolve(subject.change, subject.strategy, subject.state)
    # A verify probe that cannot prove the effect leaves a non-transactional STARTED change to a human.
    probed = action == Action.RECONCILE and subject.strategy == Strategy.NON_TRANSACTIONAL
    if subject.state is None or not (action == Action.MANUAL_INTERVENTION or probed) or subject.state.state in APPLIED_STATES:
        state = subject.state.state if subject.state else "none"
        raise ActionRefused(f"{subject.change.id} needs no manual fix (latest state: {state}); fix resolves changes in an uncertain state")
    return S.MANUAL_MARKED_AS_APPLIED if resolution == "applied" else S.MANUAL_MARKED_AS_ROLLED_BACK


def change_fix(*, change_id: str, resolution: str, actor: Actor, reason: str, source: str) -> Run:
    """Resolve an issue by hand: the operator states whether the change's effect is in place."""
    reason = _require_reason(reason)
    subject = _subject(change_id)
    fix_check(subject, resolution)
    _check_operate(actor, [subject])
    return run_start(actor=actor, source=source, kind=Run.Kind.FIX, change_id=change_id, reason=reason, parameters={"resolution": resolution})


def skip_check(subject: _Subject) -> None:
    state = subject.state.state if subject.state else ""
    if state in APPLIED_STATES:
        raise ActionRefused(f"{subject.change.id} is applied; undo it instead of skipping it")
    if state == S.SKIPPED:
        raise ActionRefused(f"{subject.change.id} is already skipped")
    action, _ = _resolve(subject.change, subject.strategy, subject.state)
    if action == Action.MANUAL_INTERVENTION:
        raise ActionRefused(f"{subject.change.id} is in an uncertain state ({state}); resolve it with fix first")


def change_skip(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Decide that a change must not run here."""
    reason = _require_reason(reason)
    subject = _subject(change_id)
    skip_check(subject)
    _check_operate(actor, [subject])
    return run_start(actor=actor, source=source, kind=Run.Kind.SKIP, change_id=change_id, reason=reason)


def reapply_check(subject: _Subject) -> None:
    if subject.state is None or subject.state.state != S.SKIPPED:
        state = subject.state.state if subject.state else "none"
        raise ActionRefused(f"{subject.change.id} is not held (latest state: {state}); only undone or skipped changes can be released")


def change_reapply(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Release an undone or skipped change so that the next run applies it."""
    reason = _require_reason(reason)
    subject = _subject(change_id)
    reapply_check(subject)
    _check_operate(actor, [subject])
    return run_start(actor=actor, source=source, kind=Run.Kind.REAPPLY, change_id=change_id, reason=reason)


def accept_checksum_check(subject: _Subject) -> None:
    if subject.state is None or subject.state.state not in APPLIED_STATES:
        raise ActionRefused(f"{subject.change.id} is not applied; its checksum is recorded when it runs")
    if subject.state.checksum == subject.change.checksum:
        raise ActionRefused(f"{subject.change.id} has no checksum drift")


def change_accept_checksum(*, change_id: str, actor: Actor, reason: str, source: str) -> Run:
    """Re-baseline an applied change whose source was edited."""
    reason = _require_reason(reason)
    subject = _subject(change_id)
    accept_checksum_check(subject)
    _check_operate(actor, [subject])
    return run_start(actor=actor, source=source, kind=Run.Kind.ACCEPT_CHECKSUM, change_id=change_id, reason=reason)


# -- single-change actions under the lock ----------------------------------------------------------


def _item(executor: engine.Executor, change_id: str) -> PlanItem:
    item = executor.plan().item(change_id)
    if item is None:
        raise NotFound(f"no change {change_id!r} in the pipeline")
    return item


def _do_fix(executor: engine.Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    state = fix_check(_Subject(item.change, item.state, item.strategy), run.parameters.get("resolution", ""))
    entry = executor.state_entry(item, state, expected=item.entry_id, reason=run.reason, details={"resolution": run.parameters["resolution"]})
    executor.results.append(executor.result(item, state, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def _do_skip(executor: engine.Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    skip_check(_Subject(item.change, item.state, item.strategy))
    entry = executor.state_entry(item, S.SKIPPED, expected=item.entry_id, reason=run.reason)
    executor.results.append(executor.result(item, engine.Result.SKIPPED, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def _do_reapply(executor: engine.Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    reapply_check(_Subject(item.change, item.state, item.strategy))
    entry = executor.state_entry(item, S.MANUAL_MARKED_AS_ROLLED_BACK, expected=item.entry_id, reason=run.reason, details={"released": True})
    executor.results.append(executor.result(item, S.MANUAL_MARKED_AS_ROLLED_BACK, run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def _do_accept_checksum(executor: engine.Executor, run: Run) -> tuple[str, str]:
    item = _item(executor, run.change_id)
    accept_checksum_check(_Subject(item.change, item.state, item.strategy))
    entry = executor.audit(
        "change.checksum_accepted",
        state="",
        change=executor.ref(item),
        fence=executor.lease,
        expected_entry_id=item.entry_id,
        reason=run.reason,
        details={"previous_checksum": item.state.checksum, "new_checksum": item.change.checksum},
    )
    executor.results.append(executor.result(item, "CHECKSUM_ACCEPTED", run.reason, entry_ids=[entry.pk]))
    return Run.Status.SUCCEEDED, ""


def _do_undo(executor: engine.Executor, run: Run) -> tuple[str, str]:
    cascade = undo_cascade(run.change_id, pipeline=executor.pipeline)
    hold_reason = f"held after undo of {run.change_id} (run {run.id}): {run.reason}"
    for subject in cascade:
        executor.check_lease()
        executor.progress(current=subject.change.id, force=True)
        item = _item(executor, subject.change.id)
        result = _undo_one(executor, item, hold_reason)
        executor.results.append(result)
        if result.result != engine.Result.ROLLED_BACK:
            return Run.Status.FAILED, f"undo of {item.change.id} failed: {result.error}"
    return Run.Status.SUCCEEDED, ""


def _undo_one(executor: engine.Executor, item: PlanItem, hold_reason: str) -> engine.ChangeResult:
    change, target = item.change, executor.targets[item.change.target]
    steps = list(reversed(change.steps))
    started = time.perf_counter()
    if item.strategy == Strategy.SHARED_TRANSACTION:
        try:
            with target.session(atomic=True) as session:
                dependencies = executor.dependencies(item, session)
                for step in steps:
                    step.rollback(dependencies)
                rolled = executor.state_entry(
                    item, S.ROLLED_BACK, expected=item.entry_id, duration_ms=executor.elapsed(started), details={"undo": True}
                )
                held = executor.state_entry(item, S.SKIPPED, expected=rolled.pk, reason=hold_reason)
        except (FenceRefused, StateMoved):
            raise
        except Exception as error:
            entry = executor.audit(
                "change.rollback_failed",
                change=executor.ref(item),
                fence=executor.lease,
                rollback_error=engine.format_error(error),
                details={"undo": True, "rolled_back_natively": True, "still_applied": True},
            )
            return executor.result(
                item,
                engine.Result.FAILED,
                "rollback raised; its transaction was rolled back, the change is still applied",
                error=str(error),
                entry_ids=[entry.pk],
            )
        return executor.result(item, engine.Result.ROLLED_BACK, hold_reason, entry_ids=[rolled.pk, held.pk])
    start = executor.state_entry(item, S.ROLLBACK_STARTED, expected=item.entry_id, details={"undo": True})
    try:
        with target.session(atomic=item.strategy == Strategy.MARKER) as session:
            dependencies = executor.dependencies(item, session)
            for step in steps:
                step.rollback(dependencies)
    except Exception as error:
        if item.strategy == Strategy.MARKER:
            # The target transaction rolled back: the change is known to be still applied.
            entry = executor.state_entry(
                item,
                S.APPLIED,
                expected=start.pk,
                rollback_error=engine.format_error(error),
                details={"undo": True, "undo_failed": True, "rolled_back_natively": True},
                counts_as_apply=False,
            )
        else:
            entry = executor.state_entry(
                item, S.ROLLBACK_FAILED, expected=start.pk, rollback_error=engine.format_error(error), details={"undo": True}
            )
        return executor.result(item, engine.Result.FAILED, "rollback raised", error=str(error), entry_ids=[start.pk, entry.pk])
    rolled = executor.state_entry(item, S.ROLLED_BACK, expected=start.pk, duration_ms=executor.elapsed(started), details={"undo": True})
    held = executor.state_entry(item, S.SKIPPED, expected=rolled.pk, reason=hold_reason)
    return executor.result(item, engine.Result.ROLLED_BACK, hold_reason, entry_ids=[start.pk, rolled.pk, held.pk])


_SINGLE_CHANGE_ACTIONS = {
    Run.Kind.UNDO: _do_undo,
    Run.Kind.FIX: _do_fix,
    Run.Kind.SKIP: _do_skip,
    Run.Kind.REAPPLY: _do_reapply,
    Run.Kind.ACCEPT_CHECKSUM: _do_accept_checksum,
}


# -- lock ------------------------------------------------------------------------------------------


def lock_status():
    return _lock_backend().holder()


def lock_force_release(*, actor: Actor, reason: str):
    reason = _require_reason(reason)
    if actor.user_id is not None:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.get(pk=actor.user_id)
        if not user.has_perm("changes_app.change_locklease"):
            raise PermissionRefused(f"{actor.name} may not release the pipeline lock")
    holder = _lock_backend().force_release()
    if holder is None:
        raise ActionRefused("the lock is not held")
    audit_record(event="lock.force_released", actor=actor, environment=_environment(), reason=reason, details=holder.as_dict())
    return holder
