"""A generated Django project with N migrations, for the ``django-migrations`` suite (issue 21).

One app, ``benchapp``, whose migrations form one chain: every 500th migration creates a table
(``Item0``, ``Item1``...) and every other one adds a nullable integer column to the newest table
(PostgreSQL allows 1,600 columns a table), so that each migration does one real schema change.
``models.py`` declares the final state, so ``migrate``'s check for unmigrated model changes finds none.

Two settings modules over the same code:

- ``genproj.settings_peer``: plain Django, ``INSTALLED_APPS = ["benchapp"]``, ``DATABASE_URL`` read by
  dj-database-url. ``manage.py migrate`` / ``migrate --plan`` with it are the peer.
- ``genproj.settings_governed``: the reference site's settings (the repository on PYTHONPATH) plus
  ``benchapp``, with ``FLAMINGOCK_DJANGO_MIGRATIONS = ["benchapp"]``: ``manage.py flamingock plan`` /
  ``run`` govern the same migrations (docs/django-migrations.md).

    python bench/django_project.py /tmp/genproj 1000      # write one, to look at or to run by hand
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = "benchapp"
#: Migrations per table: the first creates it, the others add a column each.
PER_TABLE = 500

MANAGE = """#!/usr/bin/env python
import gc
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "genproj.settings_peer")
    if sys.argv[1:2] == ["flamingock"]:
        # As the reference site's manage.py starts the command line.
        os.environ.setdefault("FLAMINGOCK_CLI", "1")
        gc.disable()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

SETTINGS_PEER = '''"""Plain Django: the generated app alone (the peer of the django-migrations benchmark)."""

import os

import dj_database_url

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = ["benchapp"]
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
'''

SETTINGS_GOVERNED = '''"""The reference site's settings plus the generated app, whose migrations are governed changes."""

from flamingock_site.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "benchapp"]  # noqa: F405
FLAMINGOCK_DJANGO_MIGRATIONS = ["benchapp"]
'''


def _table(index: int) -> int:
    """The table migration ``index`` (1-based) works on."""
    return (index - 1) // PER_TABLE


def _name(index: int) -> str:
    return f"{index:04d}_{'create_item' if (index - 1) % PER_TABLE == 0 else 'add_c'}{index:04d}"


def _column(index: int) -> str:
    return f"c{index:04d}"


def migration_source(index: int) -> str:
    table = _table(index)
    dependencies = f'[("{APP}", "{_name(index - 1)}")]' if index > 1 else "[]"
    if (index - 1) % PER_TABLE == 0:
        operation = (
            f'migrations.CreateModel(name="Item{table}", fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, '
            f'serialize=False, verbose_name="ID"))])'
        )
    else:
        operation = f'migrations.AddField(model_name="item{table}", name="{_column(index)}", field=models.IntegerField(null=True))'
    return (
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = {dependencies}\n"
        f"    operations = [{operation}]\n"
    )


def models_source(count: int) -> str:
    lines = ["from django.db import models", ""]
    for table in range(_table(count) + 1):
        first = table * PER_TABLE + 1
        last = min(count, first + PER_TABLE - 1)
        lines += ["", f"class Item{table}(models.Model):"]
        columns = [f"    {_column(index)} = models.IntegerField(null=True)" for index in range(first + 1, last + 1)]
        lines += columns or ["    pass"]
    return "\n".join(lines) + "\n"


def django_project_write(root: Path, *, count: int) -> Path:
    """Write the project under ``root`` (made if missing) and return ``root``."""
    if count < 1:
        raise ValueError("a generated project needs at least one migration")
    root.mkdir(parents=True, exist_ok=True)
    (root / "manage.py").write_text(MANAGE)
    package = root / "genproj"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "settings_peer.py").write_text(SETTINGS_PEER)
    (package / "settings_governed.py").write_text(SETTINGS_GOVERNED)
    app = root / APP
    migrations = app / "migrations"
    migrations.mkdir(parents=True, exist_ok=True)
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(models_source(count))
    (migrations / "__init__.py").write_text("")
    for index in range(1, count + 1):
        (migrations / f"{_name(index)}.py").write_text(migration_source(index))
    return root


def migration_names(count: int) -> list[str]:
    return [_name(index) for index in range(1, count + 1)]


def column_count(count: int) -> int:
    """Columns the generated tables have after all ``count`` migrations (``id`` of each table included)."""
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python bench/django_project.py DIRECTORY COUNT")
    print(django_project_write(Path(sys.argv[1]), count=int(sys.argv[2])))
