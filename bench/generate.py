"""Generators of the measured workloads: product change packages and the peer Django project.

A *trivial change* inserts one row into ``bench_row``; the product's Python change does it with the
cursor its target hands it, the peer's ``RunPython`` does it through the schema editor's
connection. Both sides therefore send the same statement once per change; everything else is the
tool's own cost.
"""

from __future__ import annotations

from pathlib import Path

BENCH_TABLE = "bench_row"
BENCH_TABLE_DDL = f"CREATE TABLE {BENCH_TABLE} (id bigserial PRIMARY KEY, n integer NOT NULL)"
ORDER_WIDTH = 5  # 00001..99999: every size sorts the same way, lexicographically and numerically

PRODUCT_CHANGE = '''\
from changes_app.definitions import Change


class InsertRow{number}(Change):
    """Benchmark change {number}: insert one row."""

    id = "bench-{number}"
    author = "bench"
    target = "app-db"

    def apply(self, cursor):
        cursor.execute("INSERT INTO {table} (n) VALUES (%s)", [{number}])
'''

PEER_MIGRATION = """\
from django.db import migrations


def insert_row(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("INSERT INTO {table} (n) VALUES (%s)", [{number}])


class Migration(migrations.Migration):
    dependencies = [{dependencies}]
    operations = [migrations.RunPython(insert_row, migrations.RunPython.noop)]
"""

PEER_SETTINGS = """\
import os

import dj_database_url

SECRET_KEY = "bench"
DEBUG = False
INSTALLED_APPS = ["benchapp"]
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
"""

PEER_MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench_peer_settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""


def product_changes_write(root: Path, *, package: str, count: int) -> Path:
    """A change package ``root/package`` of ``count`` trivial changes; returns its directory."""
    directory = root / package
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    for number in range(1, count + 1):
        name = f"{number:0{ORDER_WIDTH}d}_insert_row.py"
        (directory / name).write_text(PRODUCT_CHANGE.format(number=number, table=BENCH_TABLE))
    return directory


def peer_project_write(root: Path, *, count: int) -> Path:
    """A throwaway Django project whose app ``benchapp`` has ``count`` RunPython migrations."""
    root.mkdir(parents=True)
    (root / "manage.py").write_text(PEER_MANAGE)
    (root / "bench_peer_settings.py").write_text(PEER_SETTINGS)
    migrations = root / "benchapp" / "migrations"
    migrations.mkdir(parents=True)
    (root / "benchapp" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    previous = None
    for number in range(1, count + 1):
        name = f"{number:0{ORDER_WIDTH}d}_insert_row"
        dependencies = f'("benchapp", "{previous}")' if previous else ""
        (migrations / f"{name}.py").write_text(PEER_MIGRATION.format(number=number, table=BENCH_TABLE, dependencies=dependencies))
        previous = name
    return root
