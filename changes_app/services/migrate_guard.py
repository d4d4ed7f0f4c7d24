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
    creates the test databases, each named ``test_<NAME>``, by its ``TEST["NAME"]``, or in-memory
    SQLite as Django names it (``:memory:``, ``file:memorydb_<alias>?mode=memory...``). A test
    database is created with plain ``migrate``, whatever the environment."""
    connection = connections[alias]
    settings_dict = connection.settings_dict
    name = str(settings_dict.get("NAME") or "")
    test_name = (settings_dict.get("TEST") or {}).get("NAME")
    # Django's own test of an in-memory SQLite name, not a substring: a database whose name merely
    # contains "memory" is a real one.
    in_memory = connection.vendor == "sqlite" and connection.creation.is_in_memory_db(name)
    named_for_tests = name.startswith(TEST_DATABASE_PREFIX) or (test_name and name == str(test_name)) or in_memory
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


@dataclass(frozen=True)
class UngovernedPlan:
    """What a plain ``migrate`` of every app runs while governed migrations are pending: the leaf
    nodes of the apps that are not governed (``targets``), and the apps left out because their plan
    pulls in a governed migration (``held``)."""

    targets: list[tuple[str, str]]
    held: list[str]


def ungoverned_plan(*, alias: str) -> UngovernedPlan:
    """The targets of :class:`UngovernedPlan` for ``alias``, from one graph (not one per app)."""
    governed = governed_app_labels()
    executor = MigrationExecutor(connections[alias])
    leaves = executor.loader.graph.leaf_nodes()
    by_app: dict[str, list[tuple[str, str]]] = {}
    for key in leaves:
        by_app.setdefault(key[0], []).append(key)
    targets: list[tuple[str, str]] = []
    held: list[str] = []
    for label, keys in by_app.items():
        if label in governed:
            continue
        if any(migration.app_label in governed for migration, _ in executor.migration_plan(keys)):
            held.append(label)
            continue
        targets += keys
    return UngovernedPlan(targets, held)


def ungoverned_executor(plan: UngovernedPlan) -> type[MigrationExecutor]:
    """Django's executor, planning ``plan.targets`` only: ``migrate`` run with it applies every
    ungoverned app in one plan and sends ``pre_migrate`` and ``post_migrate`` once, as a plain
    ``migrate`` does. Its full plan (the project state before and after) stays the whole graph's,
    so the models of governed migrations already applied are in the state ``post_migrate`` sees."""

    class UngovernedExecutor(MigrationExecutor):
        def migration_plan(self, targets, clean_start=False):
            if clean_start:  # the project state's full plan: the whole graph
                return super().migration_plan(targets, clean_start=True)
            return super().migration_plan(plan.targets)

    return UngovernedExecutor
