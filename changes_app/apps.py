from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ChangesAppConfig(AppConfig):
    name = "changes_app"
    verbose_name = "Changes"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system check)
        from .targets import load_entry_point_kinds

        load_entry_point_kinds()
        post_migrate.connect(_schedules_after_migrate, sender=self)


def _schedules_after_migrate(sender, **kwargs):
    from .schedules import schedules_ensure

    schedules_ensure()
