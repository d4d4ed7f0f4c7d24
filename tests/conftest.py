"""Shared fixtures: pipelines written to disk per test, real target databases, real processes.

Tests run against the database the settings name: SQLite by default, PostgreSQL when
``DATABASE_URL`` is set (``bin/test`` runs the suite on both). A server a test needs that is not
running makes the test fail loudly; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from changes_app.pipeline.discovery import pipeline_load
from flamingock_site.celery import app as celery_app  # noqa: F401  (the app the shared tasks bind to, as in a worker)
from tests.support import dbreset
from tests.support.targets import Journal

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("FLAMINGOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _audit_vendor() -> str:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]


def pytest_report_header(config):
    return f"flamingock: audit database {_audit_vendor()}"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``postgres`` run in the PostgreSQL pass of bin/test, tests marked ``sqlite_pass``
    (which make their own SQLite databases whatever the pass) in the SQLite pass; each pass says so."""
    postgres = _audit_vendor() == "postgresql"
    other, where = ("sqlite_pass", "SQLite") if postgres else ("postgres", "PostgreSQL")
    deselected = [item for item in items if item.get_closest_marker(other)]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker(other)]
        config.hook.pytest_deselected(items=deselected)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"flamingock: {len(deselected)} {where}-pass-only tests deselected here; they run in the {where} pass")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """After migrating the test database, keep a template copy to reset it from (see dbreset)."""
    with django_db_blocker.unblock():
        dbreset.template_create()
    yield
    with django_db_blocker.unblock():
        dbreset.template_drop()


@pytest.fixture(autouse=True)
def process_cache_cleared():
    """Each test starts with an empty in-process cache: one test's throttle counts and cached
    sessions never reach the next. A shared cache (Redis) is never flushed: others use it."""
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    if isinstance(caches["default"], LocMemCache):
        caches["default"].clear()


@pytest.fixture(scope="session")
def external_pg():
    """A fresh PostgreSQL database on the local server, as an external target (marker strategy)."""
    name = f"flk_target_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is required at {PG_SERVER} (see ../shared/services.md): {error}")
    admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_SERVER}/{name}"
    yield dsn
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def journal(tmp_path, monkeypatch) -> Journal:
    path = tmp_path / "journal.jsonl"
    monkeypatch.setenv("FLAMINGOCK_TEST_JOURNAL", str(path))
    return Journal(path)


@pytest.fixture
def targets(settings, external_pg, journal, monkeypatch):
    """Target systems of the tests: the audit database, an external PostgreSQL, and a journal."""
    monkeypatch.setenv("FLAMINGOCK_TEST_TARGET_DSN", external_pg)
    configured = {
        "app-db": {"kind": "django", "alias": "default"},
        "ext-pg": {"kind": "postgres", "dsn_env": "FLAMINGOCK_TEST_TARGET_DSN"},
        "journal": {"kind": "generic", "factory": "tests.support.targets.journal_factory", "provides": ["journal"]},
    }
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured
    monkeypatch.setenv("FLAMINGOCK_TARGETS_JSON", json.dumps(configured))
    return configured


@pytest.fixture
def unique():
    """A short unique suffix for tables and ids, so tests never collide with leftovers."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_pipeline(tmp_path, settings, targets, monkeypatch):
    """Write stages of change files to disk and point discovery at them.

    ``make_pipeline({"stage": {"0001_name.py": "source", ...}})`` returns the loaded pipeline;
    call it again to rewrite files (an edit after apply, a new change) and reload.
    """
    root = tmp_path / "pipelines"
    root.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(root))
    packages: dict[str, str] = {}

    def make(stages: dict[str, dict[str, str]], *, replace: bool = False):
        entries = []
        for stage, files in stages.items():
            package = packages.setdefault(stage, f"flk_{stage.replace('-', '_')}_{uuid.uuid4().hex[:8]}")
            directory = root / package
            if replace and directory.exists():
                for old in directory.iterdir():
                    if old.is_file():
                        old.unlink()
            directory.mkdir(exist_ok=True)
            (directory / "__init__.py").write_text("")
            for name, content in files.items():
                (directory / name).write_text(textwrap.dedent(content).lstrip("\n"))
            entries.append(f"{stage}={package}")
        settings.FLAMINGOCK_DISCOVER_APPS = False
        settings.FLAMINGOCK_STAGES = entries
        # Subprocesses (crash tests) find the same pipeline through the environment.
        monkeypatch.setenv("FLAMINGOCK_STAGES", ",".join(entries))
        monkeypatch.setenv("FLAMINGOCK_DISCOVER_APPS", "0")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(REPO)]))
        return pipeline_load(reload=True)

    return make


@pytest.fixture
def subprocess_env(transactional_db, monkeypatch, targets):
    """The environment a child ``manage.py`` needs to work on this test's database."""

    def build(**extra) -> dict[str, str]:
        env = dict(os.environ)
        settings_dict = connection.settings_dict
        if connection.vendor == "sqlite":
            env["FLAMINGOCK_SQLITE_PATH"] = settings_dict["NAME"]
            env.pop("DATABASE_URL", None)
        else:
            env["DATABASE_URL"] = (
                f"postgres://{settings_dict['USER'] or 'postgres'}@{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
            )
        env.update({key: str(value) for key, value in extra.items()})
        return env

    return build


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``manage.py`` in a child process (a real process that can be killed)."""
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
