"""Celery beat's scheduler: django-celery-beat's, which refuses to start in production mode while a
refusal holds, as a worker does (flamingock_site/celery.py) and gunicorn does (flamingock_site/wsgi.py).

The check runs before the scheduler first reads its schedule: beat builds the scheduler before it
sends ``beat_init``, so that signal comes too late.
"""

from django_celery_beat.schedulers import DatabaseScheduler

from flamingock_site.celery import production_refusals_check


class CheckedDatabaseScheduler(DatabaseScheduler):
    def __init__(self, *args, **kwargs):
        production_refusals_check("beat")
        super().__init__(*args, **kwargs)
