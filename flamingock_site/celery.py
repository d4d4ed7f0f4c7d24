"""The Celery app. Tasks are thin adapters over services (changes_app/tasks.py).

Broker: Redis when REDIS_URL is set; otherwise kombu's filesystem transport under var/broker, so
that the embedded default still runs a real worker and beat as separate processes.

Workers keep their database connections between tasks, and warm up the run path when they start:
a run start then costs queries, not a new PostgreSQL session and imports. A worker's connection
lives ``FLAMINGOCK_WORKER_DB_CONN_MAX_AGE`` seconds ("none", the default: as long as it stays
healthy, checked before each task uses it; runs come minutes apart, longer than a web request's
age limit); where the database's own CONN_MAX_AGE is 0, workers close after every task too.
"""

import os
import sys

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")

app = Celery("flamingock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _worker_conn_max_ages(databases: dict[str, dict]) -> dict[str, float | None]:
    """Each database alias's connection age in a worker (0: a new connection for every task)."""
    from django.core.exceptions import ImproperlyConfigured

    value = os.environ.get("FLAMINGOCK_WORKER_DB_CONN_MAX_AGE", "none").strip().lower()
    try:
        age = None if value in {"none", "unlimited"} else float(value)
    except ValueError:
        age = -1.0
    if age is not None and age < 0:
        raise ImproperlyConfigured(f"FLAMINGOCK_WORKER_DB_CONN_MAX_AGE must be a number of seconds (0 or more) or 'none', not {value!r}")
    return {alias: age if database.get("CONN_MAX_AGE", 0) != 0 else 0 for alias, database in databases.items()}


def _worker_keeps_connections() -> bool:
    from django.conf import settings

    return any(age != 0 for age in _worker_conn_max_ages(settings.DATABASES).values())


# Celery's Django fixup closes every database connection before and after each task, whatever
# CONN_MAX_AGE says. Its reuse switch turns that off; _connections_tidy below does Django's job
# instead, more strictly than Django between requests.
app.add_defaults(lambda: {"CELERY_DB_REUSE_MAX": sys.maxsize} if _worker_keeps_connections() else {})


@app.on_configure.connect
def _broker_folders(sender, **kwargs):
    """The filesystem transport of the embedded default needs its folders to exist."""
    from django.conf import settings

    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


def _connection_clean(connection) -> bool:
    """A connection may serve the next task only if nothing of the last one is left on it: no
    transaction, no error, and (PostgreSQL) the server idle, not in a statement a signal cut short."""
    if connection.connection is None:
        return True
    if connection.in_atomic_block or connection.needs_rollback or connection.errors_occurred:
        return False
    if connection.vendor == "postgresql":
        info = getattr(connection.connection, "info", None)
        return info is not None and int(info.transaction_status) == 0  # IDLE, for psycopg 3 and 2
    return True


def _connections_tidy(*, failed: bool = False) -> None:
    """Before and after each task: keep a clean connection until its age is up, close the rest (all
    of them after a task that failed)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        try:
            if failed or not _connection_clean(connection):
                connection.close()
            else:
                # Closes an expired connection; otherwise the next query health-checks it first.
                connection.close_if_unusable_or_obsolete()
        except Exception:  # noqa: BLE001 - Django forgets a connection whose close failed; the next query connects again
            pass


def production_refusals_check(what: str) -> None:
    """A worker refuses to start in production mode while a refusal holds, as gunicorn does
    (flamingock_site/wsgi.py): Celery runs the system checks but ignores their errors. SystemExit,
    because Celery's signals log and swallow any Exception a receiver raises."""
    from django.core.checks import run_checks

    refusals = [message for message in run_checks(tags=["flamingock_production"]) if message.is_serious()]
    if refusals:
        message = f"refusing to start {what} in production mode:\n" + "\n".join(str(refusal) for refusal in refusals)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1)


@signals.worker_init.connect
def _worker_init(sender=None, **kwargs):
    """Keep connections between tasks, and warm up the run path once for every process: in the
    prefork pool this runs in the parent, so forked children start with the imports and the
    discovered pipeline; each executing process then connects on its own (never across a fork)."""
    production_refusals_check("a worker")
    if _worker_keeps_connections():
        from django.db import connections

        ages = _worker_conn_max_ages(connections.settings)
        for alias, settings_dict in connections.settings.items():
            settings_dict["CONN_MAX_AGE"] = ages.get(alias, 0)
            settings_dict["CONN_HEALTH_CHECKS"] = True
        signals.task_prerun.connect(_task_prerun, weak=False)
        signals.task_postrun.connect(_task_postrun, weak=False)
    from changes_app.tasks import worker_prepare

    worker_prepare(connect=False)
    # Connected here, after the Django fixup's own handler that closes what a child inherited.
    signals.worker_process_init.connect(_worker_process_init, weak=False)


@signals.celeryd_after_setup.connect
def _worker_named(sender=None, **kwargs):
    """Before the pool forks: every process of this worker knows it is one, and checks its code."""
    from changes_app.tasks import worker_named

    worker_named(name=str(sender))


@signals.worker_ready.connect
def _worker_ready(sender=None, **kwargs):
    """The worker publishes its heartbeat with its pipeline digest (docs/semantics.md, Workers)."""
    from changes_app.tasks import worker_started

    queues = getattr(getattr(sender, "task_consumer", None), "queues", None) or []
    worker_started(name=sender.hostname, queue=",".join(queue.name for queue in queues) or app.conf.task_default_queue)


@signals.worker_shutdown.connect
def _worker_shutdown(sender=None, **kwargs):
    from changes_app.tasks import worker_shutdown

    worker_shutdown(name=getattr(sender, "hostname", "") or str(sender))


def _worker_process_init(**kwargs):
    from changes_app.tasks import worker_prepare

    worker_prepare(connect=True)


def _task_prerun(**kwargs):
    _connections_tidy()


def _task_postrun(state=None, **kwargs):
    _connections_tidy(failed=state != "SUCCESS")
