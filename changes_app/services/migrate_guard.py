"""What a plain ``manage.py migrate`` would do to governed migrations (docs/django-migrations.md, "No way
around it"): the command refuses it in a protected environment, or records an operator's override."""

from __future__ import annotations

from dataclasses import dataclass

from django.core import mail
from django.db import connections
from django.db.backends.base.creation import TEST_DATABASE_PREFIX
from django.db.migrations.exceptions import AmbiguityError
from django.db.migrations.executor import MigrationExecutor

from changes_app.conf import current_environment
from changes_app.governance.permissions import environment_protected
from changes_app.pipeline.django_migrations import change_id, governed_app_labels


@dataclass(frozen=True)
class MigrateGuard:
    """The governed migrations a plain ``migrate`` would apply (``forwards``) or unapply (``backwards``)."""

    alias: str
    environment: str
    forwards: list[str]
    backwards: list[str]

    @property
    def governed(self) -> list[str]:
        return [*self.forwards, *self.backwards]

    @property
    def refused(self) -> bool:
        """Protected environment and a governed migration in the plan."""
        return bool(self.governed) and environment_protected(self.environment)


def test_run(alias: str) -> bool:
    """A test database in Django's test environment: the test runner sets ``mail.outbox`` before it
    creates the test databases, each named ``test_<NAME>`` or by its ``TEST["NAME"]``. A test database
    is created with plain ``migrate``, whatever the environment."""
    settings_dict = connections[alias].settings_dict
    name = str(settings_dict.get("NAME") or "")
    test_name = (settings_dict.get("TEST") or {}).get("NAME")
    named_for_tests = name.startswith(TEST_DATABASE_PREFIX) or (test_name and name == test_name) or "memory" in name
    return hasattr(mail, "outbox") and bool(named_for_tests)


def migrate_guard(*, alias: str, app_label: str | None = None, migration_name: str | None = None) -> MigrateGuard | None:
    """The governed part of the plan ``migrate [app_label [migration_name]]`` would run on ``alias``;
    ``None`` when the plan cannot be made here (an unknown app or migration: ``migrate`` says why)."""
    governed = governed_app_labels()
    environment = current_environment()
    if not governed:
        return MigrateGuard(alias, environment, [], [])
    executor = MigrationExecutor(connections[alias])
    loader = executor.loader
    try:
        if app_label and migration_name:
            if migration_name == "zero":
                targets = [(app_label, None)]
            else:
                targets = [(app_label, loader.get_migration_by_prefix(app_label, migration_name).name)]
        elif app_label:
            targets = [key for key in loader.graph.leaf_nodes() if key[0] == app_label]
        else:
            targets = loader.graph.leaf_nodes()
        plan = executor.migration_plan(targets)
    except (AmbiguityError, KeyError, LookupError):  # migrate itself says what is wrong
        return None
    forwards = [change_id(m.app_label, m.name) for m, backwards in plan if not backwards and m.app_label in governed]
    backwards = [change_id(m.app_label, m.name) for m, backwards in plan if backwards and m.app_label in governed]
    return MigrateGuard(alias, environment, forwards, backwards)
