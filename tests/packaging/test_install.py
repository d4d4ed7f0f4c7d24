"""Issue 21: the apps build as a package that installs into another Django project (docs/install.md).

The wheel is built from a copy of the repository (the working tree gets no build/ or egg-info), its
contents are checked, and it is installed with ``pip install --no-deps --target``. examples/shopsite,
copied elsewhere too, then runs as a separate process whose PYTHONPATH holds the installed copy and
not the repository: ``check``, ``migrate`` and ``flamingock plan --json`` on SQLite, and the governed
path (``flamingock plan`` then ``flamingock run`` of its migrations) on a PostgreSQL database of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
SHOPSITE = REPO / "examples" / "shopsite"
SHOP_APPS = ("catalog", "orders", "billing")
#: The migrations the squashed one owns (docs/semantics.md, Django migrations).
SQUASHED = "orders.0001_squashed_0004_order_number_unique"
REPLACED = {"orders.0001_initial", "orders.0002_orderline", "orders.0003_order_number", "orders.0004_order_number_unique"}
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
#: What is copied to build from: the packaged apps, and what must stay out of the wheel.
SOURCES = ("changes_app", "audit_app", "flamingock_site", "tests", "bench", "examples")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "var", "*.sqlite3*", "node_modules")
#: Variables of the caller that would point the child at the repository or another configuration.
CALLER_ONLY = ("DJANGO_", "FLAMINGOCK_", "SHOPSITE_", "CELERY_")
CALLER_ONLY_NAMES = {"DATABASE_URL", "REDIS_URL", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}
TIMEOUT = 300


#: Requests to shopsite's URLs in its own process (Django's test client), answered as one JSON line.
SERVE_PROBE = """
import json
from django.contrib.auth.models import User
from django.test import Client
client = Client()
page = lambda response: response.content.decode()
login = client.get("/ops/admin/login/")
result = {
    "login": [login.status_code, "Flamingock" in page(login)],
    "health": client.get("/ops/health/live/").status_code,
    "api_anonymous": client.get("/ops/api/v1/changes/").status_code,
    "admin_anonymous": client.get("/ops/admin/").status_code,
}
client.force_login(User.objects.create_superuser("shop-admin", "admin@shop.example", None))
index = client.get("/ops/admin/")
missing = client.get("/no-such-page/")
result.update(
    admin_index=[index.status_code, "Dashboard" in page(index)],
    shop_model_admin=client.get("/ops/admin/catalog/product/").status_code,
    api_changes=client.get("/ops/api/v1/changes/").status_code,
    missing=[missing.status_code, "Page not found" in page(missing)],
)
print(json.dumps(result))
"""


def shop_migrations() -> set[str]:
    """Every migration shopsite's three apps have on disk, as ``app.name``."""
    return {f"{app}.{path.stem}" for app in SHOP_APPS for path in (SHOPSITE / app / "migrations").glob("0*.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    if (REPO / "MANIFEST.in").exists():
        shutil.copy2(REPO / "MANIFEST.in", source / "MANIFEST.in")
    for name in SOURCES:
        shutil.copytree(REPO / name, source / name, ignore=IGNORED)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site-packages")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return target


@pytest.fixture
def shopsite(installed, tmp_path):
    """A function that runs shopsite's manage.py (a copy outside the repository) with the installed
    package on PYTHONPATH and the given environment."""
    project = tmp_path / "shopsite"
    shutil.copytree(SHOPSITE, project, ignore=IGNORED)
    env = {name: value for name, value in os.environ.items() if not name.startswith(CALLER_ONLY) and name not in CALLER_ONLY_NAMES}
    env.update(PYTHONPATH=str(installed), SHOPSITE_VAR_DIR=str(tmp_path / "var"), PYTHONDONTWRITEBYTECODE="1")

    def run(*args: str, extra: dict | None = None, python: tuple[str, ...] = ("manage.py",)) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *python, *args], cwd=project, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=TIMEOUT
        )

    run.project = project
    run.env = env
    return run


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def plan(shopsite, extra=None) -> dict[str, dict]:
    document = json.loads(ok(shopsite("flamingock", "plan", "--json", extra=extra)))
    return {change["id"]: change for change in document["changes"]}


# -- the wheel -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_the_wheel_holds_the_apps_with_templates_static_files_and_migrations_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/", 1)[0] for name in names}

    assert {"changes_app", "audit_app"} <= tops
    assert not tops & {"flamingock_site", "tests", "bench", "examples", "templates", "var"}, sorted(tops)
    for expected in (
        "changes_app/urls.py",
        "changes_app/celery_hooks.py",
        "changes_app/templates/admin/base_site.html",
        "changes_app/templates/admin/index.html",
        "changes_app/templates/admin/login.html",
        "changes_app/templates/500.html",
        "changes_app/templates/admin/changes_app/dashboard.html",
        "audit_app/templates/admin/audit_app/auditentry/change_list.html",
        "changes_app/static/changes_app/admin.css",
        "changes_app/static/changes_app/favicon.svg",
        "changes_app/migrations/0001_initial.py",
        "audit_app/migrations/0001_initial.py",
    ):
        assert expected in names, expected
    # Every template and static file of the source tree is in the wheel.
    for app in ("changes_app", "audit_app"):
        for folder in ("templates", "static"):
            on_disk = {str(path.relative_to(REPO)) for path in (REPO / app / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts}
            assert on_disk <= names, sorted(on_disk - names)
    assert not [name for name in names if name.endswith((".pyc", ".sqlite3"))]


# -- shopsite, a project of its own --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_shopsite_imports_the_installed_copy_and_cannot_see_the_repository(shopsite, installed):
    probe = (
        "import importlib.util, changes_app, audit_app; "
        "print(changes_app.__file__); print(audit_app.__file__); "
        "print(importlib.util.find_spec('flamingock_site')); print(importlib.util.find_spec('bench'))"
    )
    lines = ok(shopsite("-c", probe, python=())).split()

    assert lines[0].startswith(str(installed)) and lines[1].startswith(str(installed)), lines
    assert lines[2:] == ["None", "None"], lines


@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_shopsite_checks_migrates_and_plans_on_sqlite(shopsite):
    check = ok(shopsite("check"))
    assert "no issues" in check and "flamingock.W2" not in check

    # A plain `migrate` migrates the product's apps and the contrib apps, and leaves every governed
    # migration to `flamingock run` (docs/django-migrations.md, "No way around it").
    migrated = ok(shopsite("migrate", "--no-input"))
    assert f"Left to governance: {len(shop_migrations() - REPLACED)} governed migrations" in migrated
    assert "Applying contenttypes.0001_initial... OK" in migrated and "Applying billing." not in migrated
    changes = plan(shopsite)

    # Every governed migration is a change of the plan; the squashed one owns the names it replaces.
    governed = {change_id.removeprefix("django:") for change_id in changes if change_id.startswith("django:")}
    assert governed == shop_migrations() - REPLACED
    assert {change["next_action"] for change in changes.values()} == {"APPLY"}
    assert changes["django:billing.0004_backfill_payment_references"]["strategy"] == "NON_TRANSACTIONAL"

    # Migrated by name, as a developer may in an unprotected environment, they are applied outside
    # governance: the database must be adopted first.
    for app in SHOP_APPS:
        ok(shopsite("migrate", app, "--no-input"))
    shown = ok(shopsite("showmigrations", *SHOP_APPS))
    assert "[ ]" not in shown and shown.count("[X]") == len(shop_migrations() - REPLACED)
    changes = plan(shopsite)
    assert changes[f"django:{SQUASHED}"]["next_action"] == "BLOCKED"
    assert {change["next_action"] for change in changes.values()} == {"BLOCKED"}
    assert all(change["reason"].startswith("not_adopted") for change in changes.values())

    # The product's admin, API and health endpoints under the prefix shopsite chose (/ops/), with the
    # shop's own ModelAdmins on the product's admin site.
    served = json.loads(ok(shopsite("shell", "-c", SERVE_PROBE)).strip().splitlines()[-1])
    assert served == {
        "login": [200, True],
        "health": 200,
        "api_anonymous": 401,
        "admin_anonymous": 302,
        "admin_index": [200, True],
        "shop_model_admin": 200,
        "api_changes": 200,
        "missing": [404, True],
    }, served

    # shopsite's own Celery app, wired by the product's hook: its worker publishes its heartbeat
    # (a Worker row with the pipeline digest) once ready, and marks it stopped when it shuts down.
    worker_heartbeat_verify(shopsite)


def worker_heartbeat_verify(shopsite) -> None:
    database = Path(shopsite.env["SHOPSITE_VAR_DIR"]) / "shopsite.sqlite3"
    command = [sys.executable, "-m", "celery", "-A", "shopsite", "worker", "--pool", "solo", "--loglevel", "WARNING", "-n", "shop@test"]
    worker = subprocess.Popen(command, cwd=shopsite.project, env=shopsite.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, row = time.monotonic() + 120, None
        while row is None and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(1)
            with sqlite3.connect(database) as connection:
                row = connection.execute("SELECT name, digest, stopped_at FROM changes_app_worker WHERE name = 'shop@test'").fetchone()
        assert row is not None, f"no heartbeat from the worker (exit {worker.poll()})"
        assert len(row[1]) == 64 and row[2] is None, row
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=60)
    with sqlite3.connect(database) as connection:
        stopped = connection.execute("SELECT stopped_at FROM changes_app_worker WHERE name = 'shop@test'").fetchone()[0]
    assert stopped is not None, output[-3000:]


@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_a_project_that_installs_the_admin_the_wrong_way_is_told_how_to_fix_it(shopsite):
    misordered = shopsite.project / "shopsite" / "settings_misordered.py"
    misordered.write_text(
        "from shopsite.settings import *  # noqa: F403\n\n"
        "INSTALLED_APPS = ['django.contrib.admin', *[app for app in INSTALLED_APPS if app != 'changes_app.apps.FlamingockAdminConfig']]  # noqa: F405\n"
    )

    done = shopsite("check", extra={"DJANGO_SETTINGS_MODULE": "shopsite.settings_misordered"})

    output = done.stdout + done.stderr
    assert "flamingock.W201" in output and "changes_app.apps.FlamingockAdminConfig" in output, output[-3000:]
    assert "flamingock.W202" in output, output[-3000:]


@pytest.fixture
def shop_database():
    """A PostgreSQL database of this test's own, dropped afterwards, failure or not."""
    name = f"test_pkg_shopsite_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.slow
@pytest.mark.postgres
def test_shopsite_governs_its_migrations_on_postgresql(shopsite, shop_database):
    env = {"DATABASE_URL": shop_database}
    assert "no issues" in ok(shopsite("check", extra=env))
    # Every app but the shop's by plain migrate (beat first: changes_app's post_migrate needs its
    # tables); the shop's migrations are left to the governed run.
    for app in ("django_celery_beat", "audit_app", "changes_app", "guardian", "sessions", "admin"):
        ok(shopsite("migrate", app, "--no-input", extra=env))
    assert re.findall(r"\[X\]", ok(shopsite("showmigrations", *SHOP_APPS, extra=env))) == []

    before = plan(shopsite, extra=env)
    assert {change_id.removeprefix("django:") for change_id in before} == shop_migrations() - REPLACED
    assert {change["next_action"] for change in before.values()} == {"APPLY"}

    run = ok(shopsite("flamingock", "run", extra=env))

    assert "SUCCEEDED" in run, run[-3000:]
    shown = ok(shopsite("showmigrations", *SHOP_APPS, extra=env))
    assert "[ ]" not in shown and shown.count("[X]") == len(shop_migrations() - REPLACED)
    after = plan(shopsite, extra=env)
    assert {change["latest_state"] for change in after.values()} == {"APPLIED"}
    with psycopg.connect(shop_database) as connection:
        columns = {row[0] for row in connection.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'billing_invoice'")}
        indexes = {row[0] for row in connection.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'catalog_category'")}
    assert {"amount", "paid", "order_id"} <= columns
    assert "catalog_category_name_lookup" in indexes


@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_shopsite_refuses_unsafe_production_settings_in_check_its_worker_and_its_beat(shopsite):
    """The refusals are the apps' system checks, and the Celery hook applies them to a host's worker
    and beat: in a protected environment with shopsite's development key and no signing key."""
    production = {"FLAMINGOCK_ENVIRONMENT": "prod"}

    check = shopsite("check", extra=production)
    worker = shopsite("-A", "shopsite", "worker", "--pool", "solo", "--loglevel", "WARNING", extra=production, python=("-m", "celery"))
    beat = shopsite(
        "-A", "shopsite", "beat", "--loglevel", "WARNING", "-s", str(shopsite.project / "beat-schedule"), extra=production, python=("-m", "celery")
    )

    assert check.returncode != 0 and "flamingock.E101" in check.stderr and "flamingock.E104" in check.stderr, check.stderr[-3000:]
    for what, done in (("a worker", worker), ("beat", beat)):
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-3000:]
        assert f"refusing to start {what} in production mode" in output, output[-3000:]
        assert "flamingock.E101" in output and "flamingock.E104" in output, output[-3000:]
