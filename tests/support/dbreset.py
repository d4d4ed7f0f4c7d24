"""Reset test databases without weakening the audit trail's triggers.

Django resets the database between transactional tests with a flush (TRUNCATE on PostgreSQL,
DELETE on SQLite), which the append-only triggers refuse, as they must. Instead, right after the
test database is migrated, a template copy is taken; after each transactional test the database
is dropped and re-created from that template (PostgreSQL ``CREATE DATABASE ... TEMPLATE``, a file
copy on SQLite). Data migrations (the roles, the chain head) survive the reset too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
from django.db import connections
from django.test import TransactionTestCase

_templates: dict[str, str] = {}
_original_teardown = TransactionTestCase._fixture_teardown


def _admin_dsn(settings_dict) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname="postgres",
        host=settings_dict.get("HOST") or "127.0.0.1",
        port=settings_dict.get("PORT") or 5432,
        user=settings_dict.get("USER") or "postgres",
        password=settings_dict.get("PASSWORD") or None,
    )


def template_create() -> None:
    for alias in connections:
        connection = connections[alias]
        name = connection.settings_dict["NAME"]
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()
            template = f"{name}.template"
            shutil.copyfile(name, template)
        elif connection.vendor == "postgresql":
            connection.close()
            template = f"{name}_template"
            with psycopg.connect(_admin_dsn(connection.settings_dict), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{template}"')
                admin.execute(f'CREATE DATABASE "{template}" TEMPLATE "{name}"')
        else:
            continue
        _templates[alias] = template


def template_drop() -> None:
    for alias, template in list(_templates.items()):
        connection = connections[alias]
        if connection.vendor == "sqlite":
            Path(template).unlink(missing_ok=True)
        else:
            with psycopg.connect(_admin_dsn(connection.settings_dict), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        del _templates[alias]


def database_reset(alias: str) -> None:
    connection = connections[alias]
    name, template = connection.settings_dict["NAME"], _templates[alias]
    connection.close()
    if connection.vendor == "sqlite":
        for suffix in ("-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(template, name)
        return
    with psycopg.connect(_admin_dsn(connection.settings_dict), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def _fixture_teardown(self):
    aliases = [alias for alias in self._databases_names(include_mirrors=False) if alias in _templates]
    if not aliases:
        return _original_teardown(self)
    for alias in aliases:
        database_reset(alias)


TransactionTestCase._fixture_teardown = _fixture_teardown
