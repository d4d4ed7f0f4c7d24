"""Fixtures of the fleet tests: a target group of PostgreSQL schemas in a fresh database, and a
pipeline of changes aimed at it."""

from __future__ import annotations

import json

import psycopg
import pytest

from changes_app.fleets import services as fleets

FAIL_FLAG = "FLEET_TEST_FAIL_FLAG"


def group_change(change_id: str, sql: str, *, target: str = "tenants", fail_on: str = "") -> str:
    """A Python change running ``sql`` in the member's schema; it raises on the members named in the
    file that ``fail_on`` points to (the bug), while that file exists (the fix removes it)."""
    lines = ["import os", "from pathlib import Path", "", "from changes_app.definitions import Change", "", "", "class Sql(Change):"]
    lines += [f"    id = {change_id!r}", '    author = "tests"', f"    target = {target!r}", "", "    def apply(self, cursor):"]
    lines.append(f"        cursor.execute({sql!r})")
    if fail_on:
        lines.append("        cursor.execute('SELECT current_schema()')")
        lines.append("        schema = cursor.fetchone()[0]")
        lines.append(f"        flag = Path({fail_on!r})")
        lines.append("        if flag.exists() and schema in flag.read_text().split():")
        lines.append("            raise RuntimeError(f'bug on {schema}')")
    return "\n".join(lines) + "\n"


@pytest.fixture
def inline(monkeypatch):
    """Members' tasks collected instead of sent; ``drain()`` runs them here until none is left
    (``drain(limit)``: at most ``limit``); ``drain.queued`` is what waits."""
    queued: list[int] = []
    monkeypatch.setattr(fleets, "members_dispatch", lambda ids: queued.extend(ids))

    def drain(limit: int | None = None) -> int:
        done = 0
        while queued and (limit is None or done < limit):
            fleets.fleet_member_execute(member_run_id=queued.pop(0))
            done += 1
        return done

    drain.queued = queued
    return drain


@pytest.fixture
def tenant_schemas(external_pg):
    """``make(n)``: n schemas t_00.. in the external database."""
    made = []

    def make(count: int, prefix: str = "t_") -> list[str]:
        names = [f"{prefix}{index:02d}" for index in range(count)]
        with psycopg.connect(external_pg, autocommit=True) as connection:
            for name in names:
                connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                connection.execute(f'CREATE SCHEMA "{name}"')
        made.extend(names)
        return names

    yield make
    with psycopg.connect(external_pg, autocommit=True) as connection:
        for name in made:
            connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def group_targets(settings, targets, monkeypatch):
    """``configure(group)``: the test targets plus ``tenants``, a group on the external database."""

    def configure(group: dict) -> dict:
        configured = {**targets, "tenants": {"kind": "postgres", "dsn_env": "FLAMINGOCK_TEST_TARGET_DSN", "group": group}}
        settings.FLAMINGOCK_TARGET_SYSTEMS = configured
        monkeypatch.setenv("FLAMINGOCK_TARGETS_JSON", json.dumps(configured))
        return configured

    return configure


def schema_tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]).fetchall()
    return {row[0] for row in rows}


def schema_columns(dsn: str, schema: str, table: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s", [schema, table]
        ).fetchall()
    return {row[0] for row in rows}
