"""Target groups: a target system whose configuration has a ``group`` is a group of members, and a
change aimed at it applies to every member (docs/fleet.md, "Target groups").

Three kinds, by the key the group names:

- ``schemas``: the PostgreSQL schemas of the target's database, a list, or ``schemas_query``: a query
  returning one schema name per row (kind ``postgres``);
- ``databases``: one database per member, its DSN the target's with ``{member}`` replaced (kind ``postgres``);
- ``aliases``: Django database aliases (kind ``django``).

Each member's changes get the member's own connection: for a schema, its ``search_path`` is the
member's schema for the whole session, and ``SET LOCAL search_path`` again inside each change's
transaction, so that the member's marker table and every unqualified name are the member's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from changes_app.errors import FlamingockError
from changes_app.targets.base import DjangoDatabaseTarget, PostgresTarget, TargetSystem, TargetUnavailable, idle_transaction_limit

GROUP_KINDS = ("schemas", "schemas_query", "databases", "aliases")
#: What a member name may be: it becomes a schema, a database name or a lock's name.
MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


class GroupUnknown(FlamingockError):
    """The target is not a group of members, or its group configuration is broken."""


def group_config(target: str) -> dict[str, Any]:
    """The ``group`` configuration of target system ``target``; raises :class:`GroupUnknown`."""
    config = settings.FLAMINGOCK_TARGET_SYSTEMS.get(target)
    if config is None:
        raise GroupUnknown(f"no target system {target!r}")
    group = config.get("group")
    if not isinstance(group, Mapping):
        raise GroupUnknown(f"target system {target!r} is not a group of members (its configuration has no 'group')")
    problems = group_config_problems(config)
    if problems:
        raise GroupUnknown(f"target system {target!r}: {'; '.join(problems)}")
    return dict(group)


def group_config_problems(config: Mapping[str, Any]) -> list[str]:
    group = config.get("group") or {}
    kinds = [key for key in GROUP_KINDS if key in group]
    if len(kinds) != 1:
        return [f"a group names exactly one of {', '.join(GROUP_KINDS)}"]
    kind, kind_of_target = kinds[0], config.get("kind")
    if kind == "aliases" and kind_of_target != "django":
        return ["a group of 'aliases' needs kind 'django'"]
    if kind != "aliases" and kind_of_target != "postgres":
        return [f"a group of {kind!r} needs kind 'postgres'"]
    if kind != "schemas_query":
        members = group[kind]
        if not isinstance(members, list) or not all(isinstance(name, str) for name in members):
            return [f"'{kind}' must be a list of names"]
        bad = [name for name in members if not MEMBER_NAME.match(name)]
        if bad:
            return [f"member names must match {MEMBER_NAME.pattern}: {', '.join(bad[:5])}"]
        if kind == "aliases":
            missing = [name for name in members if name not in settings.DATABASES]
            if missing:
                return [f"database aliases not in DATABASES: {', '.join(missing)}"]
    elif not isinstance(group[kind], str) or not group[kind].strip():
        return ["'schemas_query' must be a query returning one schema name per row"]
    return []


def group_names() -> list[str]:
    return sorted(name for name, config in settings.FLAMINGOCK_TARGET_SYSTEMS.items() if isinstance(config.get("group"), Mapping))


def group_members_found(target: str) -> list[str]:
    """The members the group's configuration gives now (the query runs on the target's database)."""
    group = group_config(target)
    if "schemas_query" not in group:
        kind = next(key for key in GROUP_KINDS if key in group)
        return sorted(set(group[kind]))
    import psycopg  # the postgres kind's driver, as targets.base imports it: only where such a target is used

    base = PostgresTarget(target, settings.FLAMINGOCK_TARGET_SYSTEMS[target])
    try:
        with psycopg.connect(base.dsn, autocommit=True, connect_timeout=10) as connection:
            names = [row[0] for row in connection.execute(group["schemas_query"]).fetchall()]
    except psycopg.OperationalError as error:
        raise TargetUnavailable(f"target {target!r} cannot be reached to discover its members") from error
    bad = [name for name in names if not isinstance(name, str) or not MEMBER_NAME.match(name)]
    if bad:
        raise GroupUnknown(f"target system {target!r}: the schemas query returned names that are not member names: {bad[:5]}")
    return sorted(set(names))


class SchemaMemberTarget(PostgresTarget):
    """One schema of a PostgreSQL database: a connection of its own with the schema as its path.

    A worker keeps it between the members it runs (:func:`member_target_reused`): bound to the next
    member, its session is reset first (``DISCARD ALL``: nothing a change set on the session, no
    temporary table, no role, follows it to another tenant), then given the member's path."""

    def __init__(self, name: str, config: Mapping[str, Any], *, member: str):
        super().__init__(name, config)
        self.member = member
        self._marker_ready = None  # the connection on which this member's marker table is known to exist

    def _connect(self):
        fresh = self._connection is None or self._connection.closed
        connection = super()._connect()
        if fresh:
            # Nothing server-side is prepared: ``DISCARD ALL`` between members drops it all.
            connection.prepare_threshold = None
            connection.execute("SELECT set_config('search_path', quote_ident(%s), false)", [self.member])
        return connection

    def _marker_ensure(self, connection) -> None:
        # Once per member and connection, not before every change.
        if self._marker_ready is not connection:
            super()._marker_ensure(connection)
            self._marker_ready = connection

    def idle(self) -> bool:
        """Connected, and outside any transaction: fit to be kept for the next member."""
        import psycopg

        connection = self._connection
        return connection is not None and not connection.closed and connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def member_bind(self, member: str) -> None:
        """Serve ``member`` from now on: the session reset, the member's path and the idle limit set."""
        self.member, self._marker_ready = member, None
        if not self.idle():
            self.close()
            return
        try:
            self._connection.execute("DISCARD ALL")
            milliseconds = int(idle_transaction_limit() * 1000)
            self._connection.execute(
                "SELECT set_config('search_path', quote_ident(%s), false), set_config('idle_in_transaction_session_timeout', %s, false)",
                [member, str(milliseconds)],
            )
            self._bound_ms = milliseconds
        except Exception:
            self.close()  # the next use connects afresh, with the member's path

    @contextmanager
    def session(self, *, atomic):
        with super().session(atomic=atomic) as session:
            if atomic:
                session["cursor"].execute("SELECT set_config('search_path', quote_ident(%s), true)", [self.member])  # SET LOCAL
            yield session

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "member": self.member}


class DatabaseMemberTarget(PostgresTarget):
    """One database of a group of databases: the target's DSN with ``{member}`` replaced."""

    def __init__(self, name: str, config: Mapping[str, Any], *, member: str):
        super().__init__(name, config)
        self.member = member

    @property
    def dsn(self) -> str:
        template = super().dsn
        if "{member}" not in template:
            raise TargetUnavailable(f"target {self.name!r}: a group of databases needs '{{member}}' in its DSN")
        return template.replace("{member}", self.member)


def member_target(target: str, member: str) -> TargetSystem:
    """The target system ``target`` bound to one of its members."""
    group = group_config(target)
    config = settings.FLAMINGOCK_TARGET_SYSTEMS[target]
    if "aliases" in group:
        return DjangoDatabaseTarget(target, {**config, "alias": member})
    if "databases" in group:
        return DatabaseMemberTarget(target, config, member=member)
    return SchemaMemberTarget(target, config, member=member)


_kept = threading.local()


def member_target_reused(target: str, member: str) -> TargetSystem:
    """:func:`member_target` for a member's run on a worker: a group of schemas' target, with its
    connection, is kept by the thread between members and bound to each (one connection per worker
    thread, not one per member); other kinds are made for the run. Give it back with
    :func:`member_target_done`."""
    group = group_config(target)
    if "schemas" not in group and "schemas_query" not in group:
        return member_target(target, member)
    kept: dict[str, SchemaMemberTarget] = _kept.__dict__.setdefault("targets", {})
    system = kept.pop(target, None)  # out of the cache while in use
    if system is not None and system.config != settings.FLAMINGOCK_TARGET_SYSTEMS[target]:
        system.close()  # the configuration changed: a new target, a new connection
        system = None
    if system is None:
        return member_target(target, member)
    system.member_bind(member)
    return system


def member_target_done(system: TargetSystem) -> None:
    """A member's run is over with ``system``: an idle schema target is kept for the thread's next
    member; anything else (a connection left in a transaction, another kind) is closed."""
    if isinstance(system, SchemaMemberTarget) and system.idle():
        kept: dict[str, SchemaMemberTarget] = _kept.__dict__.setdefault("targets", {})
        previous = kept.get(system.name)
        if previous is not None and previous is not system:
            previous.close()
        kept[system.name] = system
    else:
        system.close()
