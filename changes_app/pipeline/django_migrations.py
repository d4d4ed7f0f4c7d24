"""Django's migrations as governed changes (docs/semantics.md, "Django migrations"; docs/django-migrations.md).

With ``FLAMINGOCK_DJANGO_MIGRATIONS`` (a list of app labels, or ``"__all__"``) every migration of
those apps is a change ``django:<app_label>.<migration_name>``, in a stage of its own per database
alias, in the migration graph's order. The product's own apps and every app their migrations depend
on are never governed: plain ``manage.py migrate`` keeps migrating them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from audit_app.models import ChangeState
from changes_app import conf, models
from changes_app.definitions import ChangeDefinition, Recovery, Step
from changes_app.pipeline.checksums import checksum_text
from changes_app.targets.django_migrations import DjangoMigrationTarget, InstalledAppsLoader, migration_targets

CHANGE_ID_PREFIX = "django:"
#: The product's own apps: their migrations are never governed, nor those they depend on.
PRODUCT_APP_LABELS = frozenset({"changes_app", "audit_app"})
#: ``FLAMINGOCK_DJANGO_MIGRATIONS = "__all__"`` governs every app with migrations but the product's.
ALL_APPS = "__all__"
#: The stage of an alias's migrations is named ``django:<alias>``.
STAGE_PREFIX = "django:"


def change_id(app_label: str, name: str) -> str:
    """``django:<app_label>.<migration_name>``."""
    return f"{CHANGE_ID_PREFIX}{app_label}.{name}"


def parse_change_id(change_id: str) -> tuple[str, str]:
    """(app label, migration name) of a Django change id; ValueError for any other id."""
    if not isinstance(change_id, str) or not change_id.startswith(CHANGE_ID_PREFIX):
        raise ValueError(f"{change_id!r} is not a Django migration's change id (django:<app_label>.<migration_name>)")
    app_label, dot, name = change_id[len(CHANGE_ID_PREFIX) :].partition(".")
    if not dot or not app_label or not name:
        raise ValueError(f"{change_id!r} is not a Django migration's change id (django:<app_label>.<migration_name>)")
    return app_label, name


def is_django_change_id(change_id: str) -> bool:
    return isinstance(change_id, str) and change_id.startswith(CHANGE_ID_PREFIX)


def stage_name(alias: str) -> str:
    """The stage that holds the governed migrations of database ``alias``."""
    return f"{STAGE_PREFIX}{alias}"


def stage_alias(name: str) -> str | None:
    """The alias of a Django stage's name, None for any other stage."""
    return name[len(STAGE_PREFIX) :] if name.startswith(STAGE_PREFIX) else None


def migration_checksum(source: str) -> str:
    """The checksum of a migration file: its normalised source, as for a Python change (§2)."""
    return checksum_text(source)


def governed_aliases() -> list[str]:
    """The database aliases whose migrations are governed (``FLAMINGOCK_DJANGO_MIGRATION_DATABASES``,
    default ``["default"]``); empty when no app is governed."""
    if not _configured_labels():
        return []
    aliases = conf.django_migration_databases()
    return [alias for alias in dict.fromkeys(aliases) if alias in settings.DATABASES]


def _configured_labels() -> set[str]:
    configured = conf.django_migrations_governed()
    if configured == ALL_APPS:
        return {config.label for config in apps.get_app_configs()}
    if isinstance(configured, str):
        configured = [configured]
    return {label for label in configured if label}


def _loader(alias: str | None = None) -> MigrationLoader:
    connection = connections[alias] if alias is not None else None
    return InstalledAppsLoader(connection, ignore_no_migrations=True, load=True)


_graph: MigrationLoader | None = None
_graph_lock = threading.Lock()


def _graph_loader() -> MigrationLoader:
    """The migration graph as on disk (no database), built once per process: the code does not
    change under a running process; a settings change in tests forgets it."""
    global _graph
    with _graph_lock:
        if _graph is None:
            _graph = InstalledAppsLoader(None, ignore_no_migrations=True)
        return _graph


def _on_setting_changed(*, setting, **kwargs):
    global _graph
    if setting in ("INSTALLED_APPS", "MIGRATION_MODULES") or setting.startswith("FLAMINGOCK_DJANGO"):
        with _graph_lock:
            _graph = None


setting_changed.connect(_on_setting_changed)


def never_governed_app_labels(loader: MigrationLoader | None = None) -> set[str]:
    """The product's own apps and every app their migrations depend on, transitively."""
    loader = loader or _graph_loader()
    graph = loader.graph
    labels = set(PRODUCT_APP_LABELS)
    for key in graph.leaf_nodes():
        if key[0] in PRODUCT_APP_LABELS:
            labels.update(app_label for app_label, _ in graph.forwards_plan(key))
    return labels


def governed_app_labels(loader: MigrationLoader | None = None) -> set[str]:
    """The apps named by ``FLAMINGOCK_DJANGO_MIGRATIONS`` that have migrations, minus the never governed."""
    configured = _configured_labels()
    if not configured:
        return set()
    loader = loader or _graph_loader()
    with_migrations = {app_label for app_label, _ in loader.disk_migrations}
    return (configured & with_migrations) - never_governed_app_labels(loader)


def unknown_configured_labels() -> list[str]:
    """Labels in ``FLAMINGOCK_DJANGO_MIGRATIONS`` that name no installed app (a validation problem)."""
    configured = conf.django_migrations_governed()
    if configured == ALL_APPS:
        return []
    if isinstance(configured, str):
        configured = [configured]
    installed = {config.label for config in apps.get_app_configs()}
    return sorted(label for label in configured if label and label not in installed)


@dataclass(frozen=True)
class DjangoMigration:
    change_id: str
    app_label: str
    name: str
    alias: str
    path: str
    checksum: str
    atomic: bool
    reversible: bool
    #: Change ids of the migrations a squashed migration replaces (and owns).
    replaces: tuple[str, ...]
    #: Change ids of the governed migrations it depends on (the graph's parents).
    dependencies: tuple[str, ...]
    #: The operations that cannot be reversed, described (empty when ``reversible``).
    irreversible: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.app_label, self.name)


def _source_path(migration) -> str:
    module = sys.modules.get(type(migration).__module__)
    return getattr(module, "__file__", "") or ""


def _read_source(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _irreversible(migration) -> tuple[str, ...]:
    return tuple(operation.describe() for operation in migration.operations if not operation.reversible)


def _describe(migration, alias: str, governed: set[str], graph, sources: dict[str, str] | None = None) -> DjangoMigration:
    key = (migration.app_label, migration.name)
    path = _source_path(migration)
    source = ""
    if path:
        source = _read_source(path)
        if sources is not None:
            sources[path] = source  # read once: the stage's change carries the same text
    parents = sorted(parent.key for parent in graph.node_map[key].parents if parent.key[0] in governed)
    irreversible = _irreversible(migration)
    return DjangoMigration(
        change_id=change_id(*key),
        app_label=migration.app_label,
        name=migration.name,
        alias=alias,
        path=path,
        checksum=migration_checksum(source) if path else "",
        atomic=bool(migration.atomic),
        reversible=not irreversible,
        replaces=tuple(change_id(*replaced) for replaced in migration.replaces),
        dependencies=tuple(change_id(*parent) for parent in parents),
        irreversible=irreversible,
    )


def governed_plan_keys(loader: MigrationLoader, governed: set[str]) -> list[tuple[str, str]]:
    """The governed nodes of the graph, in the order ``migrate`` would apply them."""
    graph = loader.graph
    ordered: dict[tuple[str, str], None] = {}
    for leaf in sorted(graph.leaf_nodes()):
        for key in graph.forwards_plan(leaf):
            if key[0] in governed:
                ordered.setdefault(key, None)
    return list(ordered)


def governed_migrations(
    alias: str = "default", *, loader: MigrationLoader | None = None, sources: dict[str, str] | None = None
) -> list[DjangoMigration]:
    """Every governed migration of ``alias``, in the graph's order. A squashed migration stands for
    the names it replaces unless some but not all of them are applied (then Django, and this list,
    keep the replaced ones). ``sources``, when given, receives each file's text by path."""
    loader = loader or _loader_for(alias)
    governed = governed_app_labels(loader)
    if not governed:
        return []
    graph = loader.graph
    return [_describe(graph.nodes[key], alias, governed, graph, sources) for key in governed_plan_keys(loader, governed)]


def _loader_for(alias: str) -> MigrationLoader:
    """A loader that reads the alias's recorder (for squashed migrations); the bare graph when the
    database cannot be read. Without squashed migrations the recorder cannot change the graph:
    the graph as on disk (built once per process) is the same, and is used."""
    graph_loader = _graph_loader()
    if not graph_loader.replacements:
        return graph_loader
    try:
        return _loader(alias)
    except DatabaseError:
        return _graph_loader()


def recorded_migrations(alias: str = "default") -> set[str]:
    """Change ids of governed migrations with a ``django_migrations`` row on ``alias``; a squashed
    migration counts as recorded when every name it replaces is."""
    recorder = MigrationRecorder(connections[alias])
    try:
        if not recorder.has_table():
            return set()
        applied = set(recorder.applied_migrations())
    except DatabaseError:
        return set()
    loader = _graph_loader()
    governed = governed_app_labels(loader)
    recorded = {change_id(*key) for key in applied if key[0] in governed}
    for key, migration in loader.replacements.items():
        if key[0] in governed and migration.replaces and all(tuple(replaced) in applied for replaced in migration.replaces):
            recorded.add(change_id(*key))
    return recorded


def adoption_required(alias: str = "default", *, known: Collection[str] | None = None) -> bool:
    """Recorder rows of governed apps exist on ``alias`` that governance did not write (the ledger
    has no state for them), and nobody adopted the alias yet. ``known``: the change ids the ledger
    holds, when the caller read them already (the plan)."""
    recorded = recorded_migrations(alias)
    if not recorded:
        return False
    try:
        if known is None:
            known = set(ChangeState.objects.filter(change_id__in=recorded).values_list("change_id", flat=True))
        if recorded <= set(known):
            return False
        return not models.DjangoAdoption.objects.filter(alias=alias).exists()
    except DatabaseError:
        return True


class Ancestors(Collection[str]):
    """The change ids a governed migration depends on, transitively, worked out when first asked
    (from the stage's parents): a stage's every set, made up front, cost O(N²) for a chain of N,
    and the plan and a run never ask (only an undo, and a new change among applied ones, do)."""

    __slots__ = ("_change_id", "_parents", "_found")

    def __init__(self, change_id: str, parents: dict[str, tuple[str, ...]]):
        self._change_id = change_id
        self._parents = parents
        self._found: frozenset[str] | None = None

    def _set(self) -> frozenset[str]:
        if self._found is None:
            found: set[str] = set()
            pending = [parent for parent in self._parents.get(self._change_id, ()) if parent in self._parents]
            while pending:
                parent = pending.pop()
                if parent not in found:
                    found.add(parent)
                    pending.extend(grand for grand in self._parents[parent] if grand in self._parents)
            self._found = frozenset(found)
        return self._found

    def __contains__(self, change_id: object) -> bool:
        return change_id in self._set()

    def __iter__(self):
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())

    def __eq__(self, other: object) -> bool:
        return self._set() == (other._set() if isinstance(other, Ancestors) else other)

    def __hash__(self) -> int:
        return hash(self._set())

    def __repr__(self) -> str:
        return f"Ancestors({sorted(self._set())!r})"


@dataclass
class DjangoChange(ChangeDefinition):
    """A governed migration as a change: the definition the plan and the engine see, with its migration."""

    migration: DjangoMigration | None = field(default=None, repr=False)
    #: Change ids of every governed migration this one depends on, transitively.
    ancestors: Collection[str] = frozenset()


def targets() -> dict[str, DjangoMigrationTarget]:
    """The targets of the governed aliases, fresh (see :func:`migration_targets`); without squashed
    migrations they share the graph as on disk (the recorder cannot change it) instead of each
    building its own."""
    aliases = governed_aliases()
    if not aliases:
        return {}
    graph_loader = _graph_loader()
    return migration_targets(aliases, loader=None if graph_loader.replacements else graph_loader)


def _shown_path(path: str, base: Path | None = None, folders: dict[str, str | None] | None = None) -> str:
    """``path`` relative to ``BASE_DIR``, symbolic links resolved. ``base`` and ``folders`` (each
    folder's resolved path relative to ``base``, or None outside it) let a stage resolve ``BASE_DIR``
    and each migrations folder once, not each file's every component; a file that is itself a link
    is resolved whole."""
    base = base or Path(settings.BASE_DIR).resolve()
    folder, name = os.path.split(path)
    if folders is None or os.path.islink(path):
        try:
            return str(Path(path).resolve().relative_to(base))
        except ValueError:
            return path
    if folder not in folders:
        try:
            folders[folder] = str(Path(folder).resolve().relative_to(base))
        except ValueError:
            folders[folder] = None
    relative = folders[folder]
    if relative is None:
        return path
    return name if relative == "." else f"{relative}/{name}"


def _steps(migration: DjangoMigration) -> list[Step]:
    def apply(dependencies):
        dependencies["migrations"].apply(migration.change_id)

    def rollback(dependencies):
        dependencies["migrations"].unapply(migration.change_id)

    preview = f"python manage.py sqlmigrate {migration.app_label} {migration.name} --database {migration.alias}"
    return [Step(label=migration.change_id, apply=apply, rollback=rollback if migration.reversible else None, preview=preview)]


def stage_changes(alias: str) -> list[DjangoChange]:
    """The changes of the alias's Django stage, in the graph's order (order ``00001``, ``00002``...)."""
    loader = _loader_for(alias)
    sources: dict[str, str] = {}
    migrations = governed_migrations(alias, loader=loader, sources=sources)
    target = migration_targets([alias])[alias]
    transactional = {atomic: target.transactional(atomic) for atomic in (True, False)}
    parents = {migration.change_id: migration.dependencies for migration in migrations}
    base, folders = Path(settings.BASE_DIR).resolve(), {}
    changes = []
    for index, migration in enumerate(migrations, start=1):
        source = sources.get(migration.path, "") if migration.path else ""
        changes.append(
            DjangoChange(
                id=migration.change_id,
                stage=stage_name(alias),
                order=f"{index:05d}",
                author="django",
                target=alias,
                transactional=transactional[bool(migration.atomic)],
                recovery=Recovery.MANUAL_INTERVENTION,
                description=f"Django migration {migration.app_label}.{migration.name} on database {alias!r}",
                environments=None,
                kind="django",
                template="",
                path=_shown_path(migration.path, base, folders),
                line=1,
                source=source,
                checksum=migration.checksum,
                steps=_steps(migration),
                migration=migration,
                ancestors=Ancestors(migration.change_id, parents),
            )
        )
    return changes
