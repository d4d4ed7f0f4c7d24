from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ChangesAppConfig(AppConfig):
    name = "changes_app"
    verbose_name = "Changes"

    def ready(self):
        from . import checks, target_kinds  # noqa: F401  (register the system check; the redis, http, rabbitmq and mysql kinds)
        from .targets import load_entry_point_kinds

        load_entry_point_kinds()
        post_migrate.connect(_schedules_after_migrate, sender=self)
        from .permission_audit import receivers_connect

        receivers_connect()


def _schedules_after_migrate(sender, **kwargs):
    from .schedules import schedules_ensure

    schedules_ensure()
