"""Queue a Celery task by its name, as beat rows and queued messages carry it.

Services never import the task modules (they are an interface above them): the task is looked up
in the Celery app that ``FLAMINGOCK_CELERY_APP`` names, where eager mode still applies.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string


def celery_app():
    """The deployment's Celery app (the reference site's by default)."""
    return import_string(getattr(settings, "FLAMINGOCK_CELERY_APP", "flamingock_site.celery.app"))


def task_send(name: str, *, args: list, task_id: str | None = None, countdown: float | None = None) -> None:
    app = celery_app()
    if name not in app.tasks:
        # A worker imports the apps' task modules when it starts; a web or CLI process, on first use.
        app.loader.import_default_modules()
    options = {"task_id": task_id} if countdown is None else {"task_id": task_id, "countdown": countdown}
    app.tasks[name].apply_async(args=args, **options)


def tasks_send_group(name: str, *, args_each: list[list]) -> None:
    """Queue one task ``name`` per argument list with Celery's canvas: a group, no chord (the product
    keeps no result backend)."""
    from celery import group  # here, not at the top: the command line starts without Celery

    app = celery_app()
    if name not in app.tasks:
        app.loader.import_default_modules()
    task = app.tasks[name]
    group(task.si(*args) for args in args_each).apply_async()
