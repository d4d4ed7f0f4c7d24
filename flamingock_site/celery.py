"""The Celery app. Tasks are thin adapters over services (changes_app/tasks.py).

Broker: Redis when REDIS_URL is set; otherwise kombu's filesystem transport under var/broker, so
that the embedded default still runs a real worker and beat as separate processes.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")

app = Celery("flamingock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_configure.connect
def _broker_folders(sender, **kwargs):
    """The filesystem transport of the embedded default needs its folders to exist."""
    from django.conf import settings

    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)
