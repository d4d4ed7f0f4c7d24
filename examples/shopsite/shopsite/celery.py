"""shopsite's Celery app, with the product's hook (docs/install.md, "Celery")."""

import os

from celery import Celery

import changes_app.celery_hooks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

app = Celery("shopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
changes_app.celery_hooks.connect(app)
