"""Settings the product reads at call time (never at import time)."""

from django.conf import settings


def current_environment() -> str:
    """The deployment this instance governs (``FLAMINGOCK_ENVIRONMENT``)."""
    return settings.FLAMINGOCK_ENVIRONMENT


#: What ``environments_declared`` offers when a host project declares nothing.
DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")


def environments_declared() -> list[str]:
    """The environments a policy may name (``FLAMINGOCK_ENVIRONMENTS``, default dev, staging and
    prod), with the current one always among them; in declared order, without repeats."""
    declared = getattr(settings, "FLAMINGOCK_ENVIRONMENTS", DEFAULT_ENVIRONMENTS)
    if isinstance(declared, str):
        declared = declared.split(",")
    names = [name.strip() for name in declared if name and name.strip()]
    return list(dict.fromkeys([*names, current_environment()]))


def django_migrations_governed() -> list[str] | str:
    """The apps whose Django migrations are governed changes (``FLAMINGOCK_DJANGO_MIGRATIONS``): a list
    of app labels or ``"__all__"``; the default, ``[]``, governs none (docs/django-migrations.md)."""
    return getattr(settings, "FLAMINGOCK_DJANGO_MIGRATIONS", None) or []


def django_migration_databases() -> list[str]:
    """The aliases whose governed migrations run (``FLAMINGOCK_DJANGO_MIGRATION_DATABASES``, default
    ``["default"]``): one stage each."""
    return list(getattr(settings, "FLAMINGOCK_DJANGO_MIGRATION_DATABASES", None) or ["default"])
