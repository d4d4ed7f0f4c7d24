"""The Celery hook: what a project's Celery app calls once so that its workers and beat run the
product's tasks as the reference site's do (docs/install.md, "Celery").

    app = Celery("shop")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
    changes_app.celery_hooks.connect(app)

``connect`` wires the worker's signals: the production refusals (a worker refuses to start while a
refusal of changes_app/checks.py holds), database connections kept between tasks, the run path
warmed up before the pool forks, and the worker heartbeat with its pipeline digest
(docs/semantics.md, Workers). Beat refuses the same way through :class:`CheckedDatabaseScheduler`
(``CELERY_BEAT_SCHEDULER = "changes_app.celery_hooks:CheckedDatabaseScheduler"``), the scheduler
django-celery-beat's with the check first.

Workers keep their database connections between tasks: a connection lives
``FLAMINGOCK_WORKER_DB_CONN_MAX_AGE`` seconds ("none", the default: as long as it stays healthy,
checked before each task uses it); where the database's own CONN_MAX_AGE is 0, workers close after
every task too.

This module imports neither the apps nor Django's settings when it loads: the project's Celery module
imports it before Django is set up. What it needs of the apps it reaches by name, once a signal fires.
"""

import os
import sys

from celery import signals
from django.utils.module_loading import import_string

#: The tag of the production refusals (changes_app.checks.PRODUCTION_TAG, by value: the checks
#: module needs the app registry).
PRODUCTION_TAG = "flamingock_production"
#: The worker's entry points in changes_app.tasks, reached by name once Django is set up.
TASKS = "changes_app.tasks"


def worker_conn_max_ages(databases: dict[str, dict]) -> dict[str, float | None]:
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


def worker_keeps_connections() -> bool:
    from django.conf import settings

    return any(age != 0 for age in worker_conn_max_ages(settings.DATABASES).values())


def broker_folders(sender=None, **kwargs) -> None:
    """The filesystem transport (the embedded default) needs its folders to exist."""
    from django.conf import settings

    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


def connection_clean(connection) -> bool:
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


def connections_tidy(*, failed: bool = False) -> None:
    """Before and after each task: keep a clean connection until its age is up, close the rest (all
    of them after a task that failed)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        try:
            if failed or not connection_clean(connection):
                connection.close()
            else:
                # Closes an expired connection; otherwise the next query health-checks it first.
                connection.close_if_unusable_or_obsolete()
        except Exception:  # noqa: BLE001 - Django forgets a connection whose close failed; the next query connects again
            pass


def production_refusals_check(what: str) -> None:
    """A worker (or beat) refuses to start in production mode while a refusal holds, as gunicorn
    does: Celery runs the system checks but ignores their errors. SystemExit, because Celery's
    signals log and swallow any Exception a receiver raises."""
    from django.core.checks import run_checks

    refusals = [message for message in run_checks(tags=[PRODUCTION_TAG]) if message.is_serious()]
    if refusals:
        message = f"refusing to start {what} in production mode:\n" + "\n".join(str(refusal) for refusal in refusals)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1)


def worker_init(sender=None, **kwargs) -> None:
    """Keep connections between tasks, and warm up the run path once for every process: in the
    prefork pool this runs in the parent, so forked children start with the imports and the
    discovered pipeline; each executing process then connects on its own (never across a fork)."""
    production_refusals_check("a worker")
    if worker_keeps_connections():
        from django.db import connections

        ages = worker_conn_max_ages(connections.settings)
        for alias, settings_dict in connections.settings.items():
            settings_dict["CONN_MAX_AGE"] = ages.get(alias, 0)
            settings_dict["CONN_HEALTH_CHECKS"] = True
        signals.task_prerun.connect(task_prerun, weak=False)
        signals.task_postrun.connect(task_postrun, weak=False)
    import_string(f"{TASKS}.worker_prepare")(connect=False)
    # Connected here, after the Django fixup's own handler that closes what a child inherited.
    signals.worker_process_init.connect(worker_process_init, weak=False)


def worker_named(sender=None, **kwargs) -> None:
    """Before the pool forks: every process of this worker knows it is one, and checks its code."""
    import_string(f"{TASKS}.worker_named")(name=str(sender))


def worker_process_init(**kwargs) -> None:
    import_string(f"{TASKS}.worker_prepare")(connect=True)


def worker_shutdown(sender=None, **kwargs) -> None:
    import_string(f"{TASKS}.worker_shutdown")(name=getattr(sender, "hostname", "") or str(sender))


def task_prerun(**kwargs) -> None:
    connections_tidy()


def task_postrun(state=None, **kwargs) -> None:
    connections_tidy(failed=state != "SUCCESS")


def connect(app) -> None:
    """Wire the product into a project's Celery app. Call it once, after ``config_from_object``."""
    # Celery's Django fixup closes every database connection before and after each task, whatever
    # CONN_MAX_AGE says. Its reuse switch turns that off; connections_tidy does Django's job
    # instead, more strictly than Django between requests.
    app.add_defaults(lambda: {"CELERY_DB_REUSE_MAX": sys.maxsize} if worker_keeps_connections() else {})
    app.on_configure.connect(broker_folders, weak=False)

    def worker_ready(sender=None, **kwargs):
        """The worker publishes its heartbeat with its pipeline digest (docs/semantics.md, Workers)."""
        queues = getattr(getattr(sender, "task_consumer", None), "queues", None) or []
        started = import_string(f"{TASKS}.worker_started")
        started(name=sender.hostname, queue=",".join(queue.name for queue in queues) or app.conf.task_default_queue)

    signals.worker_init.connect(worker_init, weak=False)
    signals.celeryd_after_setup.connect(worker_named, weak=False)
    signals.worker_ready.connect(worker_ready, weak=False)
    signals.worker_shutdown.connect(worker_shutdown, weak=False)


def __getattr__(name: str):
    """``CheckedDatabaseScheduler``: django-celery-beat's scheduler with the production refusals
    first. Built when beat first asks for it (module ``__getattr__``): its models need the app
    registry, which is not ready when a project's Celery module imports this one.

    The check runs before the scheduler first reads its schedule: beat builds the scheduler before
    it sends ``beat_init``, so that signal comes too late."""
    if name != "CheckedDatabaseScheduler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from django_celery_beat.schedulers import DatabaseScheduler

    class CheckedDatabaseScheduler(DatabaseScheduler):
        def __init__(self, *args, **kwargs):
            production_refusals_check("beat")
            super().__init__(*args, **kwargs)

    globals()[name] = CheckedDatabaseScheduler
    return CheckedDatabaseScheduler
