"""Workers and the code they run (docs/semantics.md, Workers; docs/reliability.md, "Workers know
their code").

Each Celery worker publishes, with a heartbeat, the digest of the pipeline its code discovered. The
current pipeline of an environment is what the deploy step (``migrate``) or the web process last
recorded (``DeployedPipeline``); a worker never records it. A worker whose digest differs is
stale: it never judges (no run, no drift check) and hands its tasks back.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models.signals import post_migrate
from django.utils import timezone

from audit_app.types import HOSTNAME
from changes_app.conf import current_environment
from changes_app.errors import FlamingockError
from changes_app.governance.permissions import PermissionRefused
from changes_app.models import DeployedPipeline, Worker
from changes_app.pipeline.discovery import Pipeline, pipeline_load
from changes_app.services.catalogue import catalogue_sync

logger = logging.getLogger("flamingock.services")

#: The reason code of a run that no current worker would take (docs/semantics.md, Workers).
NO_CURRENT_WORKER = "no_current_worker"


# -- settings, read at call time --------------------------------------------------------------------


def worker_heartbeat_seconds() -> float:
    """How often a worker publishes its heartbeat (``FLAMINGOCK_WORKER_HEARTBEAT_SECONDS``, 10)."""
    return float(getattr(settings, "FLAMINGOCK_WORKER_HEARTBEAT_SECONDS", 10.0))


def worker_live_seconds() -> float:
    """A worker is live while its last heartbeat is younger than this (three heartbeats by default)."""
    return float(getattr(settings, "FLAMINGOCK_WORKER_LIVE_SECONDS", 3 * worker_heartbeat_seconds()))


def worker_handbacks() -> int:
    """How many times a stale worker hands a task back before it ends it (``FLAMINGOCK_WORKER_HANDBACKS``, 5)."""
    return int(getattr(settings, "FLAMINGOCK_WORKER_HANDBACKS", 5))


def worker_handback_countdown() -> float:
    """Seconds before a handed-back task may be delivered again (``FLAMINGOCK_WORKER_HANDBACK_COUNTDOWN``, 10)."""
    return float(getattr(settings, "FLAMINGOCK_WORKER_HANDBACK_COUNTDOWN", 10.0))


def product_version() -> str:
    """The deployed release, as the deploy names it (``FLAMINGOCK_VERSION``); "" when unnamed."""
    return str(getattr(settings, "FLAMINGOCK_VERSION", "") or "")


# -- this process ------------------------------------------------------------------------------------

#: Set once when this process becomes a Celery worker: its node name and when it started.
_this_worker: dict[str, Any] = {}
_heartbeat_stop = threading.Event()


def worker_process_name() -> str:
    """This process's worker name, or "" when it is not a worker (the web process, the CLI)."""
    return _this_worker.get("name", "")


def worker_process_mark(*, name: str) -> None:
    """This process is the worker ``name`` (set before the pool forks, so every child knows)."""
    _this_worker["name"] = name


class WorkerStale(FlamingockError):
    """This worker's code is not the current pipeline: it must not judge (run, resolve, check)."""

    def __init__(self, *, worker: str, digest: str, current: str, environment: str):
        self.worker, self.digest, self.current, self.environment = worker, digest, current, environment
        super().__init__(
            f"worker {worker} runs pipeline {digest[:12]}, not the current {current[:12]} of {environment}: it is stale and hands the task back"
        )


def worker_stale_check() -> None:
    """Raise :class:`WorkerStale` when this process is a worker whose pipeline is not the current
    one. Outside a worker (the CLI running in-process, the web process), and before anyone recorded
    a current pipeline, nothing is refused."""
    name = worker_process_name()
    if not name:
        return
    environment = current_environment()
    current = DeployedPipeline.objects.filter(environment=environment).values_list("digest", flat=True).first()
    digest = pipeline_load().digest
    if current and current != digest:
        raise WorkerStale(worker=name, digest=digest, current=current, environment=environment)


# -- the current pipeline ------------------------------------------------------------------------------


def pipeline_current(*, environment: str | None = None) -> DeployedPipeline | None:
    """The current pipeline of ``environment`` (this one by default), or None if none was recorded."""
    return DeployedPipeline.objects.filter(environment=environment or current_environment()).first()


def pipeline_current_record(*, recorded_by: str, pipeline: Pipeline | None = None, catalogue: bool = False) -> DeployedPipeline | None:
    """Record this process's pipeline as the environment's current one (the deploy step, the web
    process); with ``catalogue``, mirror the change definitions too. A worker never records: it
    returns None, as it does for an invalid pipeline (which never runs)."""
    if worker_process_name():
        return None
    pipeline = pipeline or pipeline_load()
    if not pipeline.valid:
        return None
    if catalogue:
        catalogue_sync(pipeline=pipeline)
    environment = current_environment()
    values = {"digest": pipeline.digest, "version": product_version()}
    row = DeployedPipeline.objects.filter(environment=environment).first()
    if row is not None and all(getattr(row, key) == value for key, value in values.items()):
        return row
    values |= {"recorded_by": recorded_by, "host": HOSTNAME, "pid": os.getpid(), "recorded_at": timezone.now()}
    # No savepoint (this may run inside the caller's transaction): a row another web process
    # inserted meanwhile is skipped, then updated.
    if row is None and DeployedPipeline.objects.bulk_create([DeployedPipeline(environment=environment, **values)], ignore_conflicts=True)[0].pk:
        return DeployedPipeline.objects.get(environment=environment)
    DeployedPipeline.objects.filter(environment=environment).update(**values)
    return DeployedPipeline.objects.get(environment=environment)


def pipeline_record_on_migrate(sender, *, using: str = "default", **kwargs) -> None:
    """``post_migrate``: the deploy step records the current pipeline. A pipeline that cannot be
    discovered never stops a migration; the first run or plan says why."""
    if getattr(sender, "label", "") != "changes_app" or kwargs.get("flamingock_run"):
        # Only the deploy step's migrate records the digest, never a governed run's post_migrate.
        return
    # post_migrate is sent for every app, also by a migrate of another app before changes_app's own
    # tables exist (a host migrating its apps one at a time): nothing to record yet.
    if DeployedPipeline._meta.db_table not in connections[using].introspection.table_names():
        return
    try:
        pipeline_current_record(recorded_by="migrate")
    except Exception:
        logger.warning("migrate: recording the current pipeline failed; the web process records it at its first run", exc_info=True)


# -- heartbeats ---------------------------------------------------------------------------------------


def worker_heartbeat(*, name: str, queue: str = "", started_at: datetime | None = None) -> Worker:
    """Publish this worker's heartbeat: where it runs, which pipeline and version its code has."""
    now = timezone.now()
    values = {
        "host": HOSTNAME,
        "pid": os.getpid(),
        "environment": current_environment(),
        "queue": queue,
        "digest": pipeline_load().digest,
        "version": product_version(),
        "started_at": started_at or now,
        "heartbeat_at": now,
        "stopped_at": None,
    }
    if Worker.objects.filter(name=name).update(**values):
        return Worker.objects.get(name=name)
    try:
        with transaction.atomic():
            return Worker.objects.create(name=name, **values)
    except IntegrityError:
        Worker.objects.filter(name=name).update(**values)
        return Worker.objects.get(name=name)


def worker_heartbeat_start(*, name: str, queue: str = "") -> None:
    """Make this process a worker named ``name``: publish a heartbeat now (before any task is taken),
    then every ``worker_heartbeat_seconds()`` from a daemon thread. A failed beat is logged; the
    worker looks dead to the others until the next one succeeds."""
    started_at = timezone.now()
    _this_worker.update(name=name, queue=queue, started_at=started_at)
    _heartbeat_stop.clear()
    try:
        worker_heartbeat(name=name, queue=queue, started_at=started_at)
    except Exception:
        logger.warning("worker %s: publishing the first heartbeat failed", name, exc_info=True)

    def beat() -> None:
        while not _heartbeat_stop.wait(worker_heartbeat_seconds()):
            try:
                worker_heartbeat(name=name, queue=queue, started_at=started_at)
            except Exception:
                logger.warning("worker %s: publishing a heartbeat failed", name, exc_info=True)
            finally:
                # The thread's own connection: never left open between beats.
                connections.close_all()

    threading.Thread(target=beat, name="flamingock-worker-heartbeat", daemon=True).start()


def worker_stopped(*, name: str) -> None:
    """A warm shutdown: the worker says it stopped (a killed one just stops beating)."""
    _heartbeat_stop.set()
    try:
        Worker.objects.filter(name=name).update(stopped_at=timezone.now())
    except Exception:
        logger.warning("worker %s: recording the shutdown failed", name, exc_info=True)


# -- what the interfaces show ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerView:
    """A worker as the admin, the API and the CLI show it."""

    worker: Worker
    live: bool
    #: ``current``, ``stale`` (another pipeline than the current one), or ``unknown`` (none recorded).
    code: str

    def as_dict(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "name": worker.name,
            "host": worker.host,
            "pid": worker.pid,
            "environment": worker.environment,
            "queue": worker.queue,
            "digest": worker.digest,
            "version": worker.version,
            "started_at": worker.started_at.isoformat(),
            "heartbeat_at": worker.heartbeat_at.isoformat(),
            "stopped_at": worker.stopped_at.isoformat() if worker.stopped_at else None,
            "live": self.live,
            "code": self.code,
        }


def worker_live(worker: Worker, *, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return worker.stopped_at is None and worker.heartbeat_at >= now - timedelta(seconds=worker_live_seconds())


def workers_list(*, environment: str | None = None, live_only: bool = False) -> list[WorkerView]:
    """This environment's workers, newest heartbeat first, each live or not and current or stale."""
    environment = environment or current_environment()
    current = pipeline_current(environment=environment)
    now = timezone.now()
    views = []
    for worker in Worker.objects.filter(environment=environment).order_by("-heartbeat_at", "name"):
        live = worker_live(worker, now=now)
        if live_only and not live:
            continue
        code = "unknown" if current is None else ("current" if worker.digest == current.digest else "stale")
        views.append(WorkerView(worker=worker, live=live, code=code))
    return views


def workers_may_view(*, user) -> bool:
    """Whether ``user`` may see the workers (``view_worker``; the local operator of an unprotected
    environment, ``None``, may)."""
    return user is None or user.has_perm("changes_app.view_worker")


def workers_report(*, user, environment: str | None = None) -> dict[str, Any]:
    """The environment's current pipeline and its workers, as the API and the CLI's ``--json`` give
    them; refused (``PermissionRefused``) to a user without ``view_worker``."""
    if not workers_may_view(user=user):
        raise PermissionRefused(f"{user} may not view the workers")
    environment = environment or current_environment()
    current = pipeline_current(environment=environment)
    return {
        "environment": environment,
        "current": None
        if current is None
        else {
            "digest": current.digest,
            "version": current.version,
            "recorded_by": current.recorded_by,
            "host": current.host,
            "pid": current.pid,
            "recorded_at": current.recorded_at.isoformat(),
        },
        "workers": [view.as_dict() for view in workers_list(environment=environment)],
    }


def workers_running(*, digest: str, environment: str | None = None) -> list[Worker]:
    """The live workers of ``environment`` whose code is the pipeline ``digest``."""
    return [view.worker for view in workers_list(environment=environment, live_only=True) if view.worker.digest == digest]


def workers_warning(*, pipeline: Pipeline | None = None) -> str:
    """What to tell a caller about to queue a run: "" when a live worker runs the caller's pipeline,
    otherwise why the run would wait and fail (docs/reliability.md, "Workers know their code")."""
    pipeline = pipeline or pipeline_load()
    environment = current_environment()
    if workers_running(digest=pipeline.digest, environment=environment):
        return ""
    live = workers_list(environment=environment, live_only=True)
    others = f"; {len(live)} live worker(s) run other code ({', '.join(sorted({view.worker.digest[:12] for view in live}))})" if live else ""
    return (
        f"no live worker runs pipeline {environment} ({pipeline.digest[:12]}){others}: a queued run waits, then fails "
        f"with {NO_CURRENT_WORKER} (docs/reliability.md, 'Workers know their code')"
    )


__all__ = [
    "NO_CURRENT_WORKER",
    "WorkerStale",
    "WorkerView",
    "pipeline_current",
    "pipeline_current_record",
    "pipeline_record_on_migrate",
    "worker_heartbeat",
    "worker_heartbeat_start",
    "worker_process_mark",
    "worker_process_name",
    "worker_stale_check",
    "worker_stopped",
    "workers_list",
    "workers_may_view",
    "workers_report",
    "workers_running",
    "workers_warning",
]


# The deploy step records the current pipeline: ``migrate`` sends post_migrate after every run,
# with or without new migrations. Connected when the app loads its services (ChangesAppConfig.ready).
post_migrate.connect(pipeline_record_on_migrate, dispatch_uid="flamingock.pipeline_record_on_migrate")
