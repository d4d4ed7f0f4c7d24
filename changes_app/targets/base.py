"""Target systems: one registry of kinds, each a class with a small contract.

A kind turns a settings entry (connection configuration only) into an object that:
- names the dependencies it hands to a change (``dependency_names``);
- opens a session yielding those dependencies, inside a transaction when asked (``session``);
- says which execution strategy a change gets (``strategy``);
- for the marker strategy, writes and reads the marker row inside its own transactions.

Built-in kinds: ``django`` (a Django database alias), ``postgres`` (an external PostgreSQL by DSN,
through psycopg 3) and ``generic`` (whatever objects a user factory returns). Third-party kinds
register with :func:`register_target_kind` or through the ``flamingock.target_kinds`` entry point.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from importlib import metadata
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import IntegrityError, connections, router, transaction
from django.utils.module_loading import import_string

from audit_app.models import AuditEntry
from audit_app.redaction import MASK, redact, register_secret
from changes_app.definitions import Strategy

MARKER_TABLE = "flamingock_marker"
MARKER_DDL = (
    f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} ("
    " change_id varchar(200) NOT NULL,"
    " generation integer NOT NULL,"
    " run_id varchar(36) NOT NULL,"
    " fencing_token bigint,"
    " applied_at timestamp DEFAULT CURRENT_TIMESTAMP,"
    " PRIMARY KEY (change_id, generation))"
)
MARKER_INSERT = f"INSERT INTO {MARKER_TABLE} (change_id, generation, run_id, fencing_token) VALUES (%s, %s, %s, %s)"
MARKER_SELECT = f"SELECT run_id, fencing_token FROM {MARKER_TABLE} WHERE change_id = %s AND generation = %s"


class TransactionBound(StrEnum):
    """What ends a transaction that a paused or partitioned runner left open on a target.

    The pipeline lock is a lease: once it lapses another runner takes over, and whatever the stale
    holder still holds open in a target would make the new holder wait (docs/reliability.md). A kind
    says how its open transactions are bounded, so that the risk is named where it exists.
    """

    #: The target's server ends a transaction left idle for half the lease (PostgreSQL
    #: ``idle_in_transaction_session_timeout``, MariaDB ``idle_transaction_timeout``, MySQL ``wait_timeout``).
    SERVER = "server"
    #: The kind opens no server transaction: nothing is held between two commands (Redis, RabbitMQ, HTTP).
    NO_TRANSACTION = "no_transaction"
    #: Nothing ends it: a holder paused inside a change's transaction blocks a takeover until it
    #: resumes or dies (SQLite; third-party and ``generic`` kinds unless they declare otherwise).
    NONE = "none"
    #: It depends on the database behind it (the ``django`` kind): see :meth:`TargetSystem.bound`.
    PER_DATABASE = "per_database"


def idle_transaction_limit() -> float:
    """Seconds a target transaction may sit idle before its server ends it: half the lease, like the
    audit connection (flamingock_site/settings.py), so it is gone before another runner can take over."""
    return float(settings.FLAMINGOCK_LOCK.get("lease_seconds", 60.0)) / 2


#: What a concurrent creation of the marker table can raise once the other creator committed:
#: unique_violation (``pg_type``'s index), duplicate_table, duplicate_object (the row type).
_DUPLICATE_SQLSTATES = frozenset({"23505", "42P07", "42710"})


def _duplicate(error: BaseException) -> bool:
    """Whether ``error`` (a driver's, or Django's wrapping one) says the object already exists."""
    for candidate in (error, error.__cause__):
        if getattr(candidate, "sqlstate", None) in _DUPLICATE_SQLSTATES:
            return True
    return False


def marker_table_ensure(execute: Callable[[str], Any]) -> None:
    """``CREATE TABLE IF NOT EXISTS`` for the marker table, idempotent under concurrency.

    PostgreSQL's ``IF NOT EXISTS`` reads the catalogue before it inserts: two sessions creating the
    table at once both find it absent, and the second fails on the unique index of ``pg_type`` (or
    as a duplicate table or type) once the first commits. That failure means the table now exists,
    so the statement is sent once more, and finds it. Runs outside any change transaction
    (autocommit), so a failure aborts nothing; any other error is raised as it is.
    """
    try:
        execute(MARKER_DDL)
    except Exception as error:
        if not _duplicate(error):
            raise
        execute(MARKER_DDL)


def mysql_idle_limit_set(cursor, mariadb: bool, seconds: float) -> None:
    """MariaDB ends a transaction idle past ``idle_transaction_timeout``; MySQL has no such limit, and
    its nearest, ``wait_timeout``, closes any idle session (the kind connects again before the next use).
    Both count whole seconds: the limit is rounded down, at least 1."""
    variable = "idle_transaction_timeout" if mariadb else "wait_timeout"
    cursor.execute(f"SET SESSION {variable} = %s", [max(1, int(seconds))])


class MarkerConflict(Exception):
    """Another apply of the same change and generation already committed in the target."""


class TargetUnavailable(Exception):
    """The target system cannot be reached or is not configured."""


class TargetSystem:
    """Base class of target system kinds."""

    kind: ClassVar[str] = ""
    supports_transactions: ClassVar[bool] = False
    #: What ends a transaction a paused holder left open on this kind (:class:`TransactionBound`).
    transaction_bound: ClassVar[TransactionBound] = TransactionBound.NONE
    #: Configuration keys whose values are secrets (masked wherever the config is shown).
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password", "dsn", "url", "token"})

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.config = dict(config)
        self.description = self.config.get("description", "")

    @classmethod
    def config_problems(cls, config: Mapping[str, Any]) -> list[str]:
        return []

    @property
    def enabled(self) -> bool:
        """``"enabled": false`` switches a configured system off: discovery leaves out its stages."""
        return self.config.get("enabled", True) is not False

    def required_environment(self) -> list[str]:
        """The environment variables the configuration names (keys ending in ``_env``)."""
        return [str(value) for key, value in self.config.items() if key.endswith("_env") and value]

    @property
    def dialect(self) -> str:
        """The SQL dialect for the ``sql`` template, or ``""`` if this is not a SQL target."""
        return ""

    def dependency_names(self) -> set[str] | None:
        """Names a change may ask for; ``None`` when the kind cannot tell before connecting."""
        return {"context"}

    def bound(self) -> TransactionBound:
        """This system's :class:`TransactionBound` (the kind's, unless it depends on the database)."""
        return self.transaction_bound

    def strategy(self, *, transactional: bool) -> Strategy:
        return Strategy.NON_TRANSACTIONAL

    @contextmanager
    def session(self, *, atomic: bool) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def marker_insert(self, dependencies, *, change_id: str, generation: int, run_id: str, token: int | None) -> None:
        raise NotImplementedError(f"{self.kind} targets have no marker table")

    def marker_lookup(self, *, change_id: str, generation: int) -> dict | None:
        raise NotImplementedError(f"{self.kind} targets have no marker table")

    def describe(self) -> dict[str, Any]:
        """The configuration with secrets masked, safe for the admin, the API and the trail."""
        shown = {}
        for key, value in self.config.items():
            if key in self.secret_keys and not key.endswith("_env"):
                shown[key] = redact(str(value)) if "://" in str(value) else MASK
            else:
                shown[key] = value
        return shown

    def close(self) -> None:
        """Release connections held between sessions."""


def audit_alias() -> str:
    return router.db_for_write(AuditEntry)


class DjangoDatabaseTarget(TargetSystem):
    """A Django database alias. Holding the audit tables, it gets the shared-transaction strategy."""

    kind = "django"
    supports_transactions = True
    transaction_bound = TransactionBound.PER_DATABASE

    @classmethod
    def config_problems(cls, config):
        alias = config.get("alias", "default")
        if alias not in settings.DATABASES:
            return [f"database alias {alias!r} is not in DATABASES"]
        return []

    @property
    def alias(self) -> str:
        return self.config.get("alias", "default")

    @property
    def dialect(self) -> str:
        return connections[self.alias].vendor

    def dependency_names(self):
        return {"context", "cursor", "connection", "using"}

    def bound(self):
        vendor = connections[self.alias].vendor
        return TransactionBound.SERVER if vendor in ("postgresql", "mysql") else TransactionBound.NONE

    def strategy(self, *, transactional):
        if not transactional:
            return Strategy.NON_TRANSACTIONAL
        return Strategy.SHARED_TRANSACTION if self.alias == audit_alias() else Strategy.MARKER

    def _bound_set(self, connection) -> None:
        # A session setting, sent before the transaction opens (a SET inside it would end with it).
        seconds = idle_transaction_limit()
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(int(seconds * 1000))])
            elif connection.vendor == "mysql":
                mysql_idle_limit_set(cursor, connection.mysql_is_mariadb, seconds)

    def _marker_ensure(self, connection) -> None:
        def execute(sql):
            with transaction.atomic(using=self.alias), connection.cursor() as cursor:
                cursor.execute(sql)

        marker_table_ensure(execute)

    @contextmanager
    def session(self, *, atomic):
        connection = connections[self.alias]
        if atomic:
            if self.alias != audit_alias() and not connection.in_atomic_block:
                # The marker strategy: bound the transaction, and create the marker table before it.
                self._bound_set(connection)
                self._marker_ensure(connection)
            with transaction.atomic(using=self.alias), connection.cursor() as cursor:
                yield {"cursor": cursor, "connection": connection, "using": self.alias}
        else:
            with connection.cursor() as cursor:
                yield {"cursor": cursor, "connection": connection, "using": self.alias}

    def marker_insert(self, dependencies, *, change_id, generation, run_id, token):
        cursor = dependencies["cursor"]
        # Made before the transaction opened (session); a savepoint here if the caller's block held one.
        self._marker_ensure(dependencies["connection"])
        try:
            with transaction.atomic(using=self.alias):
                cursor.execute(MARKER_INSERT, [change_id, generation, run_id, token])
        except IntegrityError as error:
            raise MarkerConflict(str(error)) from error

    def marker_lookup(self, *, change_id, generation):
        connection = connections[self.alias]
        self._marker_ensure(connection)
        with connection.cursor() as cursor:
            cursor.execute(MARKER_SELECT, [change_id, generation])
            row = cursor.fetchone()
        return {"run_id": row[0], "fencing_token": row[1]} if row else None


class PostgresTarget(TargetSystem):
    """An external PostgreSQL database by DSN (``dsn_env`` names the variable holding it)."""

    kind = "postgres"
    supports_transactions = True
    transaction_bound = TransactionBound.SERVER

    def __init__(self, name, config):
        super().__init__(name, config)
        self._connection = None
        self._bound_ms: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def config_problems(cls, config):
        if not config.get("dsn") and not config.get("dsn_env"):
            return ["a postgres target needs 'dsn_env' (the environment variable holding its DSN)"]
        return []

    @property
    def dialect(self) -> str:
        return "postgresql"

    @property
    def dsn(self) -> str:
        dsn = self.config.get("dsn") or os.environ.get(self.config.get("dsn_env", ""), "")
        if not dsn:
            raise TargetUnavailable(f"target {self.name!r}: environment variable {self.config.get('dsn_env')!r} is not set")
        register_secret(_dsn_password(dsn))
        return dsn

    def dependency_names(self):
        return {"context", "cursor", "connection"}

    def strategy(self, *, transactional):
        return Strategy.MARKER if transactional else Strategy.NON_TRANSACTIONAL

    def _connect(self):
        import psycopg

        if self._connection is None or self._connection.closed:
            self._bound_ms = None
            try:
                self._connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as error:
                raise TargetUnavailable(f"target {self.name!r} cannot be reached: {redact(str(error))}") from error
        return self._connection

    def _bound_set(self, connection) -> None:
        # A session setting, sent once per connection and again if the lease changed.
        milliseconds = int(idle_transaction_limit() * 1000)
        if self._bound_ms != milliseconds:
            connection.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(milliseconds)])
            self._bound_ms = milliseconds

    def _marker_ensure(self, connection) -> None:
        marker_table_ensure(connection.execute)

    @contextmanager
    def session(self, *, atomic):
        connection = self._connect()
        if atomic:
            # Only the marker strategy opens a transaction here: bound it, and make the table before it.
            self._bound_set(connection)
            self._marker_ensure(connection)
            with connection.transaction(), connection.cursor() as cursor:
                yield {"cursor": cursor, "connection": connection}
        else:
            with connection.cursor() as cursor:
                yield {"cursor": cursor, "connection": connection}

    def marker_insert(self, dependencies, *, change_id, generation, run_id, token):
        import psycopg

        cursor = dependencies["cursor"]
        try:
            cursor.execute(MARKER_INSERT, [change_id, generation, run_id, token])
        except psycopg.errors.UniqueViolation as error:
            raise MarkerConflict(str(error)) from error

    def marker_lookup(self, *, change_id, generation):
        import psycopg

        connection = self._connect()
        try:
            self._marker_ensure(connection)
            with connection.cursor() as cursor:
                cursor.execute(MARKER_SELECT, [change_id, generation])
                row = cursor.fetchone()
        except psycopg.OperationalError as error:
            if not connection.closed:
                raise
            # The connection itself failed (the server went away): that, and only that, is "unreachable".
            raise TargetUnavailable(f"target {self.name!r} cannot be reached: {redact(str(error))}") from error
        return {"run_id": row[0], "fencing_token": row[1]} if row else None

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _dsn_password(dsn: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn).get("password")
    except Exception:  # a malformed DSN fails later, when connecting, with psycopg's message
        return None


class GenericTarget(TargetSystem):
    """Hands changes whatever a user factory returns: ``{"kind": "generic", "factory": "pkg.fn"}``.

    The factory is called as ``factory(name, config)`` and returns a dict of dependencies. The
    optional ``provides`` list names them so that validation can check what changes ask for.
    """

    kind = "generic"
    # Whatever the factory hands out: nothing here can end a transaction it holds open.
    transaction_bound = TransactionBound.NONE

    def __init__(self, name, config):
        super().__init__(name, config)
        self._dependencies = None

    @classmethod
    def config_problems(cls, config):
        factory = config.get("factory")
        if not factory:
            return ["a generic target needs 'factory' (the dotted path of a callable)"]
        try:
            import_string(factory)
        except ImportError as error:
            return [f"factory {factory!r} cannot be imported: {error}"]
        return []

    def dependency_names(self):
        provides = self.config.get("provides")
        return None if provides is None else {"context", *provides}

    @contextmanager
    def session(self, *, atomic):
        if self._dependencies is None:
            self._dependencies = dict(import_string(self.config["factory"])(self.name, self.config))
        yield dict(self._dependencies)


_kinds: dict[str, type[TargetSystem]] = {}
_systems: dict[str, TargetSystem] | None = None
_systems_lock = threading.Lock()


def register_target_kind(cls: type[TargetSystem]) -> type[TargetSystem]:
    """Register a kind; a second, different class under the same name is refused."""
    if not cls.kind:
        raise ImproperlyConfigured(f"{cls.__qualname__} has no 'kind'")
    existing = _kinds.get(cls.kind)
    if existing is not None and existing is not cls:
        raise ImproperlyConfigured(f"target kind {cls.kind!r} is already registered by {existing.__qualname__}")
    _kinds[cls.kind] = cls
    return cls


for _builtin in (DjangoDatabaseTarget, PostgresTarget, GenericTarget):
    register_target_kind(_builtin)


def load_entry_point_kinds() -> None:
    for entry_point in metadata.entry_points(group="flamingock.target_kinds"):
        register_target_kind(entry_point.load())


def target_kinds() -> dict[str, type[TargetSystem]]:
    return dict(_kinds)


def target_config_problems() -> dict[str, list[str]]:
    """Problems of each configured target system, by name."""
    problems = {}
    for name, config in settings.FLAMINGOCK_TARGET_SYSTEMS.items():
        cls = _kinds.get(config.get("kind", ""))
        found = [f"unknown target kind {config.get('kind')!r} (known: {', '.join(sorted(_kinds))})"] if cls is None else cls.config_problems(config)
        if not isinstance(config.get("enabled", True), bool):
            found = [*found, "'enabled' must be true or false"]
        if found:
            problems[name] = found
    return problems


def target_systems() -> dict[str, TargetSystem]:
    """The configured target systems, built once per process from settings."""
    global _systems
    with _systems_lock:
        if _systems is None:
            broken = target_config_problems()
            _systems = {
                name: _kinds[config["kind"]](name, config) for name, config in settings.FLAMINGOCK_TARGET_SYSTEMS.items() if name not in broken
            }
        return _systems


def target_systems_reset(**kwargs) -> None:
    global _systems
    with _systems_lock:
        if _systems is not None:
            for system in _systems.values():
                system.close()
        _systems = None


def _on_setting_changed(*, setting, **kwargs):
    if setting in {"FLAMINGOCK_TARGET_SYSTEMS", "DATABASES"}:
        target_systems_reset()


setting_changed.connect(_on_setting_changed)
