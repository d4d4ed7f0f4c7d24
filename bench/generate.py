"""Generators of the measured workloads: the product's change package and the peers beside it.

A *trivial change* inserts one row into ``bench_row``; the product's Python change does it with the
cursor its target hands it, Django's ``RunPython`` through the schema editor's connection, an
Alembic revision with ``op.execute`` and the framework-free floor with a psycopg cursor. Every tool
therefore sends the same statement, ``INSERT INTO bench_row (n) VALUES (<number>)``, once per
change (Django and the floor bind the number on the client, so the server sees the same text);
everything else is the tool's own cost.
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


ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
path_separator = os

# The logging of `alembic init`: INFO for alembic (one "Running upgrade" line per revision), like
# Django's "Applying ... OK" line per migration.
[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

ALEMBIC_ENV = '''\
"""The env.py of `alembic init`, with the database URL from DATABASE_URL and the psycopg 3 driver.

`alembic -x transaction_per_migration=1 upgrade head` commits each revision in its own transaction
(Alembic's default is one transaction around the whole upgrade).
"""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def database_url() -> str:
    scheme, separator, rest = os.environ["DATABASE_URL"].partition("://")
    if not separator or scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise SystemExit("DATABASE_URL must be a postgres:// or postgresql:// URL")
    return f"postgresql+psycopg://{rest}"


def run_migrations_offline() -> None:
    context.configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    per_migration = context.get_x_argument(as_dictionary=True).get("transaction_per_migration") == "1"
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=per_migration)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

ALEMBIC_REVISION = '''\
"""Benchmark revision {number}: insert one row."""

from alembic import op

revision = "{revision}"
down_revision = {down_revision}
branch_labels = None
depends_on = None


def upgrade():
    op.execute("INSERT INTO {table} (n) VALUES ({number})")


def downgrade():
    pass
'''

FLOOR_AUDIT_TABLE = "bench_floor_audit"

#: The framework-free floor: what any runner that keeps an audit row per change must at least do.
#: One connection; the applied ids read once; per change BEGIN, the change's INSERT, an audit-shaped
#: INSERT, COMMIT. No lock, fence, hash chain or checksum: those are what the product adds on top.
FLOOR_RUNNER = '''\
"""Framework-free floor: apply changes 1..N, one transaction plus an audit-shaped row per change.

    DATABASE_URL=postgresql://... python floor_runner.py N
"""

import os
import sys
import time
import uuid

import psycopg

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS {audit_table} (
    id bigserial PRIMARY KEY,
    event varchar(64) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    environment varchar(64) NOT NULL,
    change_id varchar(200) NOT NULL,
    stage varchar(200) NOT NULL,
    "order" varchar(64) NOT NULL,
    target varchar(200) NOT NULL,
    state varchar(32) NOT NULL,
    run_id uuid NOT NULL,
    actor varchar(200) NOT NULL,
    duration_ms double precision NOT NULL,
    details jsonb NOT NULL DEFAULT '{{}}'
)
"""
AUDIT_INSERT = (
    'INSERT INTO {audit_table} (event, environment, change_id, stage, "order", target, state, run_id, actor, duration_ms)'
    " VALUES ('CHANGE_APPLIED', 'dev', %s, 'bench', %s, 'app-db', 'APPLIED', %s, 'bench', %s)"
)


def main() -> None:
    count = int(sys.argv[1])
    run_id = uuid.uuid4()
    # ClientCursor binds on the client, as Django does: the server receives the same statement text.
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, cursor_factory=psycopg.ClientCursor) as connection:
        cursor = connection.cursor()
        cursor.execute(AUDIT_DDL)
        applied = {{row[0] for row in cursor.execute("SELECT change_id FROM {audit_table} WHERE state = 'APPLIED'")}}
        for number in range(1, count + 1):
            change_id = f"bench-{{number}}"
            if change_id in applied:
                continue
            started = time.perf_counter()
            with connection.transaction():
                cursor.execute("INSERT INTO {table} (n) VALUES (%s)", [number])
                cursor.execute(AUDIT_INSERT, [change_id, f"{{number:0{width}d}}", run_id, (time.perf_counter() - started) * 1000])


if __name__ == "__main__":
    main()
'''


def alembic_project_write(root: Path, *, count: int) -> Path:
    """An Alembic project (``alembic.ini``, ``migrations/env.py``) with ``count`` revisions in a chain."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    previous = None
    for number in range(1, count + 1):
        revision = alembic_revision(number)
        text = ALEMBIC_REVISION.format(number=number, revision=revision, down_revision=repr(previous), table=BENCH_TABLE)
        (versions / f"{number:0{ORDER_WIDTH}d}_insert_row.py").write_text(text)
        previous = revision
    return root


def alembic_revision(number: int) -> str:
    return f"r{number:0{ORDER_WIDTH}d}"


def floor_runner_write(root: Path) -> Path:
    """The floor runner script; run it as ``python <path> N`` with ``DATABASE_URL`` set."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "floor_runner.py"
    path.write_text(FLOOR_RUNNER.format(audit_table=FLOOR_AUDIT_TABLE, table=BENCH_TABLE, width=ORDER_WIDTH))
    return path
