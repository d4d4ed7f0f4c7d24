"""The Celery app. Tasks are thin adapters over services (changes_app/tasks.py).

Broker: Redis when REDIS_URL is set; otherwise kombu's filesystem transport under var/broker, so
that the embedded default still runs a real worker and beat as separate processes.

The reference site wires the product in as a host project does (docs/install.md, "Celery"):
``changes_app.celery_hooks.connect(app)`` makes a worker refuse unsafe production settings, keep its
database connections between tasks, warm up the run path when it starts and publish its heartbeat.
"""

import os

from celery import Celery

from changes_app import celery_hooks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")

app = Celery("flamingock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
celery_hooks.connect(app)

# The names this module had before the hook moved into the apps (flamingock_site/beat.py, tests).
production_refusals_check = celery_hooks.production_refusals_check
_worker_conn_max_ages = celery_hooks.worker_conn_max_ages
_connections_tidy = celery_hooks.connections_tidy
