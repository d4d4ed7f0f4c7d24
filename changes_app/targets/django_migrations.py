"""The target of governed Django migrations: one database alias, run through Django's own executor
(docs/django-migrations.md, "Execution").

Strategy (docs/semantics.md, "Django migrations"): an atomic migration on the alias that holds the
audit trail shares its transaction with the APPLIED entry; on any other alias the recorder row in
``django_migrations`` is the marker; a non-atomic migration, and any migration on MySQL/MariaDB, is
non-transactional. One ``ProjectState`` is carried from one migration to the next within a run, as
``migrate`` does: the executor builds the targets once per run (:func:`migration_targets`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from django.apps import apps
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.db.migrations.state import ProjectState
from django.db.models.signals import post_migrate

from changes_app.definitions import Strategy
from changes_app.targets.base import MarkerConflict, TargetSystem, TransactionBound, audit_alias

KIND = "django_migrations"

logger = logging.getLogger(__name__)


class InstalledAppsLoader(MigrationLoader):
    """Django's loader, but a dependency on an app that is not installed is left out instead of
    failing the graph: the command line runs without some of the site's apps (``django_celery_beat``
    among them), whose migrations the product's own depend on, and those are never governed."""

    def check_key(self, key, current_app):
        if key[0] != current_app and key[0] not in {config.label for config in apps.get_app_configs()}:
            return None
        return super().check_key(key, current_app)


def migration_executor(connection, loader: MigrationLoader | None = None) -> MigrationExecutor:
    """Django's executor over :class:`InstalledAppsLoader` (its constructor would build the strict
    one); over ``loader`` when given (a graph the recorder cannot change: no squashed migration)."""
    executor = MigrationExecutor.__new__(MigrationExecutor)
    executor.connection = connection
    executor.loader = loader if loader is not None else InstalledAppsLoader(connection)
    executor.recorder = MigrationRecorder(connection)
    executor.progress_callback = None
    return executor


class DjangoMigrationTarget(TargetSystem):
    """A database alias whose governed migrations run through Django's ``MigrationExecutor``."""

    kind = KIND
    supports_transactions = True
    transaction_bound = TransactionBound.PER_DATABASE

    def __init__(self, name: str, config, *, loader: MigrationLoader | None = None):
        super().__init__(name, config)
        #: The graph as on disk, when the recorder cannot change it (no squashed migration): shared,
        #: read only, instead of a graph built per target.
        self._loader = loader
        self._executor: MigrationExecutor | None = None
        self._state: ProjectState | None = None
        #: The app labels this run applied migrations of: ``post_migrate`` is sent for them on close.
        self._applied_apps: set[str] = set()
        self._state_nodes: set[tuple[str, str]] = set()

    @property
    def alias(self) -> str:
        return self.config.get("alias", self.name)

    @property
    def dialect(self) -> str:
        return connections[self.alias].vendor

    def dependency_names(self):
        return {"context", "connection", "using", "migrations"}

    def bound(self):
        vendor = connections[self.alias].vendor
        return TransactionBound.SERVER if vendor in ("postgresql", "mysql") else TransactionBound.NONE

    def transactional(self, atomic: bool) -> bool:
        """Whether a migration can run in a transaction here: atomic, and not on MySQL/MariaDB
        (whose DDL commits implicitly)."""
        return atomic and connections[self.alias].vendor != "mysql"

    def strategy(self, *, transactional):
        if not transactional or connections[self.alias].vendor == "mysql":
            return Strategy.NON_TRANSACTIONAL
        return Strategy.SHARED_TRANSACTION if self.alias == audit_alias() else Strategy.MARKER

    @contextmanager
    def session(self, *, atomic) -> Iterator[dict]:
        connection = connections[self.alias]
        dependencies = {"connection": connection, "using": self.alias, "migrations": self}
        if not atomic:
            yield dependencies
            return
        # SQLite cannot switch foreign keys off inside a transaction, and its schema editor refuses
        # to run with them on: switch them off before the transaction opens, as ``migrate`` does.
        sqlite = connection.vendor == "sqlite" and not connection.in_atomic_block
        if sqlite:
            connection.disable_constraint_checking()
        try:
            with transaction.atomic(using=self.alias):
                yield dependencies
        finally:
            if sqlite:
                connection.enable_constraint_checking()

    # -- the recorder row as the marker ------------------------------------------------------------

    def _recorded(self, key: tuple[str, str]) -> bool:
        recorder = self.executor().recorder
        return recorder.has_table() and recorder.migration_qs.filter(app=key[0], name=key[1]).exists()

    def marker_insert(self, dependencies, *, change_id, generation, run_id, token):
        # Django's executor writes the recorder row with the migration, in the same transaction: here
        # a row already present means another apply committed.
        key = _key(change_id)
        if self._recorded(key):
            raise MarkerConflict(f"{change_id}: django_migrations already has the row ({key[0]}, {key[1]}) on {self.alias!r}")

    def marker_lookup(self, *, change_id, generation):
        key = _key(change_id)
        self._executor = None  # read afresh: another process may have written it
        if self._recorded(key):
            return {"run_id": "django_migrations", "fencing_token": None}
        return None

    # -- Django's executor -------------------------------------------------------------------------

    def executor(self) -> MigrationExecutor:
        if self._executor is None:
            self._executor = migration_executor(connections[self.alias], self._loader)
        return self._executor

    def _state_before(self, key: tuple[str, str]) -> ProjectState:
        """The project state just before ``key``: the carried one, brought forward by the
        migrations it lacks (their states only, as ``migrate`` does for applied ones)."""
        loader = self.executor().loader
        if self._state is None:
            self._state = ProjectState(real_apps=loader.unmigrated_apps)
            self._state_nodes = set()
        graph = loader.graph
        if all(parent.key in self._state_nodes for parent in graph.node_map[key].parents):
            # The carried nodes are closed under ancestry (each is added after its own ancestors):
            # with every parent in, every ancestor is. Walking the whole plan per migration is O(N²).
            return self._state
        for node in graph.forwards_plan(key)[:-1]:
            if node not in self._state_nodes:
                self._state = graph.nodes[node].mutate_state(self._state, preserve=False)
                self._state_nodes.add(node)
        return self._state

    def apply(self, change_id: str) -> None:
        key = _key(change_id)
        executor = self.executor()
        migration = executor.loader.graph.nodes[key]
        state = self._state_before(key)
        if "apps" not in state.__dict__:
            state.apps  # render the models once, as migrate does: later migrations reuse them  # noqa: B018
        try:
            self._state = executor.apply_migration(state, _in_open_transaction(migration, executor.connection))
            if migration.replaces:
                # As ``migrate`` does after its plan (check_replacements): the squashed name too.
                executor.recorder.record_applied(*key)
        except BaseException:
            self._state = None  # half-mutated: rebuilt before the next migration
            raise
        self._state_nodes.add(key)
        self._applied_apps.add(key[0])

    def unapply(self, change_id: str) -> None:
        key = _key(change_id)
        self._executor = None
        executor = self.executor()
        migration = executor.loader.graph.nodes[key]
        state = executor.loader.project_state(key, at_end=True)
        self._state = None
        executor.unapply_migration(state, _in_open_transaction(migration, executor.connection))

    def close(self):
        applied, self._applied_apps = self._applied_apps, set()
        self._executor = None
        self._state = None
        if applied:
            post_migrate_send(self.alias, applied)


def post_migrate_send(alias: str, app_labels: Collection[str]) -> list[str]:
    """Send ``post_migrate`` for the app configs of ``app_labels`` on ``alias``, as ``migrate`` does
    after its plan: content types and permissions of the models of governed migrations exist after
    the run, not only after the next deploy's ``migrate`` (docs/django-migrations.md, "Execution").

    Only the apps the run migrated, never the product's own (they are never governed): the digest
    recording receiver (``services.workers.pipeline_record_on_migrate``) answers ``changes_app``
    only, so a run never records the deployed pipeline; ``flamingock_run=True`` tells receivers
    that a governed run, not ``migrate``, sent it. A receiver's error is logged, never the run's.
    Returns the labels it was sent for."""
    sent = []
    for config in apps.get_app_configs():
        if config.label not in app_labels or config.models_module is None:
            continue
        for receiver, error in post_migrate.send_robust(
            sender=config, app_config=config, verbosity=0, interactive=False, using=alias, apps=apps, plan=[], flamingock_run=True
        ):
            if isinstance(error, Exception):
                logger.error(
                    "post_migrate for %s on %s: %s failed: %s", config.label, alias, getattr(receiver, "__name__", receiver), error, exc_info=error
                )
        sent.append(config.label)
    return sent


def _in_open_transaction(migration, connection):
    """The migration to hand Django's executor. Inside the session's transaction (an atomic
    migration, shared-transaction or marker strategy), an atomic one is handed over as a copy marked
    non-atomic: its schema editor would otherwise wrap it in a savepoint of its own, two round trips
    per migration (``SAVEPOINT``, ``RELEASE``) that change nothing, since a failure rolls the whole
    transaction back anyway. Outside one it is handed over as it is."""
    if not migration.atomic or not connection.in_atomic_block:
        return migration
    inside = copy.copy(migration)
    inside.atomic = False
    return inside


def _key(change_id: str) -> tuple[str, str]:
    rest = change_id.split(":", 1)[1] if ":" in change_id else change_id
    app_label, _, name = rest.partition(".")
    return app_label, name


def migration_targets(aliases: list[str], *, loader: MigrationLoader | None = None) -> dict[str, DjangoMigrationTarget]:
    """A fresh target per governed alias (fresh: the project state is carried within one run only),
    over ``loader``'s graph when given (see :class:`DjangoMigrationTarget`)."""
    return {alias: DjangoMigrationTarget(alias, {"kind": KIND, "alias": alias}, loader=loader) for alias in aliases}
