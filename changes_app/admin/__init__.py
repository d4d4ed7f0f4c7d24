"""The product's admin, one module per area; importing the package registers every ModelAdmin
on the product's own site (``site.site``, Django's default admin site in the reference site).

The periodic tasks' screens (``schedules``) exist only where django-celery-beat is installed: the
command line starts without it (settings.FLAMINGOCK_CLI), yet may load the URLs (Celery's Django
fixup checks them when ``run --async`` queues a run).
"""

from django.apps import apps

from changes_app.admin import changes, drift, evidence, fleets, requests, runs, site, targets, tokens, workers  # noqa: F401

if apps.is_installed("django_celery_beat"):
    from changes_app.admin import schedules  # noqa: F401
