from django.apps import AppConfig


class ChangesAppConfig(AppConfig):
    name = "changes_app"
    verbose_name = "Changes"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system check)
        from .targets import load_entry_point_kinds

        load_entry_point_kinds()
