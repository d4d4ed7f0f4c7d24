from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig
from django.db.models.signals import post_migrate


class ChangesAppConfig(AppConfig):
    name = "changes_app"
    verbose_name = "Changes"

    def ready(self):
        # Registering is what these imports do: the system checks, the target kinds (each module
        # registers its kind and templates), and the receivers of run_finished and of permission changes.
        from changes_app import checks  # noqa: F401
        from changes_app.fleets import services as fleet_services  # noqa: F401  (its request kinds; no Celery import)
        from changes_app.governance import logins, permission_version
        from changes_app.governance.permission_audit import receivers_connect
        from changes_app.services import notifications, requests  # noqa: F401
        from changes_app.services.schedules import schedules_ensure
        from changes_app.targets import http, mysql, rabbitmq, redis  # noqa: F401
        from changes_app.targets.base import load_entry_point_kinds

        load_entry_point_kinds()
        post_migrate.connect(schedules_ensure, sender=self, dispatch_uid="flamingock.schedules_ensure")
        receivers_connect()
        permission_version.receivers_connect()
        logins.receivers_connect()


class FlamingockAdminConfig(AdminConfig):
    """Django's admin with the product's site as the default one (``admin.site``), for a host project:
    it replaces ``django.contrib.admin`` in INSTALLED_APPS, after ``changes_app`` (docs/install.md).
    The reference site uses a variant without autodiscovery (flamingock_site/admin_apps.py)."""

    default_site = "changes_app.admin.site.default_site"
