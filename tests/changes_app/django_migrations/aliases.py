"""A second database alias for the tests of governed migrations off the audit alias: a database of
the audit database's vendor (SQLite file or PostgreSQL database), or MariaDB, registered with
Django's connection handler for one test and removed after it.

MariaDB goes through Django's MySQL backend on PyMySQL (requirements: ``PyMySQL``; mysqlclient is
not installed here), made to stand in for ``MySQLdb`` as PyMySQL documents. A server that does not
answer fails the test loudly; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pymysql
import pytest
from django.db import connections

from tests.conftest import PG_SERVER

MARIADB_HOST = os.environ.get("FLAMINGOCK_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("FLAMINGOCK_TEST_MARIADB_PORT", "3306"))


def alias_register(alias: str, config: dict) -> dict:
    """Add ``alias`` to Django's connections (and so to ``settings.DATABASES``) with Django's
    defaults filled in; returns the settings it got."""
    filled = connections.configure_settings({"default": dict(connections.settings["default"]), alias: dict(config)})[alias]
    connections.settings[alias] = filled
    return filled


def alias_forget(alias: str) -> None:
    """Close ``alias``'s connection and remove it, before pytest-django's teardown walks the aliases."""
    if alias in connections.settings:
        try:
            connections[alias].close()
        finally:
            try:
                del connections[alias]
            except AttributeError:
                pass
            connections.settings.pop(alias, None)


class Database:
    """A database of its own behind ``alias``: registered for a module of tests (pytest-django lets a
    test use only the aliases its marker names, checked when the test starts), emptied before each
    test (:meth:`reset`: dropped and made again), dropped at the end."""

    def __init__(self, alias: str, config: dict, create, drop):
        self.alias, self._create, self._drop = alias, create, drop
        self._create()
        self.settings = alias_register(alias, config)

    def reset(self) -> None:
        connections[self.alias].close()
        self._drop()
        self._create()

    def close(self) -> None:
        alias_forget(self.alias)
        self._drop()


def same_vendor_database(alias: str, folder: Path) -> Database:
    """A database of the audit database's vendor: a SQLite file, or a PostgreSQL database."""
    default = connections["default"]
    if default.vendor == "sqlite":
        path = folder / f"{alias}-{uuid.uuid4().hex[:8]}.sqlite3"
        return Database(alias, {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}, lambda: None, lambda: path.unlink(missing_ok=True))
    name = f"test_h8_{alias}_{uuid.uuid4().hex[:10]}"
    settings_dict = default.settings_dict
    config = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": settings_dict.get("USER") or "postgres",
        "PASSWORD": settings_dict.get("PASSWORD") or "",
        "HOST": settings_dict.get("HOST") or "127.0.0.1",
        "PORT": settings_dict.get("PORT") or 5432,
    }

    def admin(sql: str) -> None:
        try:
            with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as connection:
                connection.execute(sql)
        except psycopg.OperationalError as error:
            pytest.fail(f"PostgreSQL is required at {PG_SERVER}: {error}")

    return Database(alias, config, lambda: admin(f'CREATE DATABASE "{name}"'), lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def mariadb_database(alias: str) -> Database:
    """A MariaDB database (root, no password), through Django's MySQL backend on PyMySQL."""
    pymysql.install_as_MySQLdb()  # Django's MySQL backend imports MySQLdb
    name = f"flk_h8_{uuid.uuid4().hex[:10]}"

    def admin(sql: str) -> None:
        try:
            connection = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", autocommit=True, connect_timeout=5)
        except pymysql.err.MySQLError as error:
            pytest.fail(f"MariaDB is required at {MARIADB_HOST}:{MARIADB_PORT} (root, no password): {error}")
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    config = {"ENGINE": "django.db.backends.mysql", "NAME": name, "USER": "root", "PASSWORD": "", "HOST": MARIADB_HOST, "PORT": MARIADB_PORT}
    return Database(alias, config, lambda: admin(f"CREATE DATABASE `{name}`"), lambda: admin(f"DROP DATABASE IF EXISTS `{name}`"))


class FixtureAppsRouter:
    """The fixture apps' models live on ``alias``, as a project with a second database routes them:
    their data migrations (``djm_notes.0002_backfill`` saves through the default manager) then write
    there, as under ``migrate --database``."""

    def __init__(self, alias: str = "second"):
        self.alias = alias

    def _route(self, model, **hints):
        return self.alias if model._meta.app_label.startswith("djm_") else None

    db_for_read = db_for_write = _route


def governed_on(settings, *aliases: str):
    """Govern the fixture apps' migrations on ``aliases`` (their models routed to the first) and
    reload the pipeline."""
    from changes_app.pipeline.discovery import pipeline_load

    settings.DATABASE_ROUTERS = [FixtureAppsRouter(aliases[0])]
    settings.FLAMINGOCK_DJANGO_MIGRATION_DATABASES = list(aliases)
    return pipeline_load(reload=True)


def recorded_on(alias: str) -> set[tuple[str, str]]:
    from django.db.migrations.recorder import MigrationRecorder

    recorder = MigrationRecorder(connections[alias])
    if not recorder.has_table():
        return set()
    return {key for key in recorder.applied_migrations() if key[0].startswith("djm_")}


def columns_on(alias: str, table: str) -> set[str]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        if table not in connection.introspection.table_names(cursor):
            return set()
        return {column.name for column in connection.introspection.get_table_description(cursor, table)}


def tables_on(alias: str) -> set[str]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))
