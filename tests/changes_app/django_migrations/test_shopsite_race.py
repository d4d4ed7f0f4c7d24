"""The race of docs/django-migrations.md on examples/shopsite and PostgreSQL: five ``flamingock run``
processes started together apply every governed migration exactly once; five plain ``migrate``
processes, the peer, collide."""

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.conftest import PG_SERVER, REPO

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SHOPSITE = REPO / "examples" / "shopsite"
FIXTURE_APPS = REPO / "tests" / "fixtures" / "django_apps"
APPS = ("catalog", "orders", "billing")
OWN = " OR ".join(f"{{column}} LIKE '{app}\\_%'" for app in APPS)


def shop(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SHOPSITE / "manage.py"), *args], cwd=SHOPSITE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.fixture
def databases():
    """Fresh PostgreSQL databases of this test (dropped after), each with the product's own apps
    migrated by ``migrate changes_app`` and ``migrate audit_app`` (and what they depend on)."""
    admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True)
    made = []

    def make(settings_module: str) -> dict[str, str]:
        name = f"djcore_shop_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        env = {
            **os.environ,
            "DATABASE_URL": f"{PG_SERVER}/{name}",
            "DJANGO_SETTINGS_MODULE": settings_module,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(FIXTURE_APPS)]),
            "FLAMINGOCK_CLI": "1",
        }
        env.pop("FLAMINGOCK_DEMO", None)
        for app in ("changes_app", "audit_app"):
            code, output = finished(shop("migrate", app, "-v0", env=env))
            assert code == 0, output
        return env

    yield make
    for name in made:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def counts(env: dict[str, str]) -> dict[str, int]:
    with psycopg.connect(env["DATABASE_URL"]) as db:

        def one(sql: str) -> int:
            return db.execute(sql).fetchone()[0]

        def has(table: str) -> bool:
            return one(f"SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = '{table}'") == 1

        apps = ", ".join(f"'{app}'" for app in APPS)
        return {
            "recorder_rows": one(f"SELECT count(*) FROM django_migrations WHERE app IN ({apps})"),
            "recorder_distinct": one(f"SELECT count(DISTINCT (app, name)) FROM django_migrations WHERE app IN ({apps})"),
            "ledger_applied": one("SELECT count(*) FROM audit_app_changestate WHERE change_id LIKE 'django:%' AND state = 'APPLIED'")
            if has("audit_app_changestate")
            else 0,
            "trail_applied": one("SELECT count(*) FROM audit_app_auditentry WHERE change_id LIKE 'django:%' AND state = 'APPLIED'"),
            "trail_applied_distinct": one(
                "SELECT count(DISTINCT change_id) FROM audit_app_auditentry WHERE change_id LIKE 'django:%' AND state = 'APPLIED'"
            ),
            "tables": one(f"SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND ({OWN.format(column='tablename')})"),
            "indexes": one(f"SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND ({OWN.format(column='tablename')})"),
            "columns": one(f"SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND ({OWN.format(column='table_name')})"),
            "seeded_brands": one("SELECT count(*) FROM catalog_brand") if has("catalog_brand") else 0,
        }


def test_five_flamingock_runs_started_together_apply_every_migration_exactly_once(databases):
    reference = databases("shopsite_plain")
    code, output = finished(shop("migrate", "-v0", env=reference))
    assert code == 0, output
    expected = counts(reference)
    governed = databases("shopsite.settings")
    assert counts(governed)["tables"] == 0  # only the product's own apps are migrated so far

    code, output = finished(shop("flamingock", "plan", "--json", env=governed))
    assert code == 0, output
    planned = [change["id"] for change in json.loads(output)["changes"] if change["id"].startswith("django:")]
    assert len(planned) == 28 and all(change.split(".")[0][7:] in APPS for change in planned)

    runs = [shop("flamingock", "run", env=governed) for _ in range(5)]
    outcomes = [finished(run) for run in runs]

    assert [code for code, _ in outcomes] == [0] * 5, [output[-2000:] for _, output in outcomes]
    assert sum("SUCCEEDED" in output for _, output in outcomes) == 1
    measured = counts(governed)
    assert measured["ledger_applied"] == measured["trail_applied"] == measured["trail_applied_distinct"] == len(planned)
    # Django's own rows and the schema are exactly those of one plain migrate.
    for key in ("recorder_rows", "recorder_distinct", "tables", "indexes", "columns", "seeded_brands"):
        assert measured[key] == expected[key], (key, measured, expected)
    print("governed race:", json.dumps(measured), "reference:", json.dumps(expected))


def test_five_plain_migrate_processes_started_together_collide(databases):
    plain = databases("shopsite_plain")

    runs = [shop("migrate", env=plain) for _ in range(5)]
    outcomes = [finished(run) for run in runs]

    failed = [output for code, output in outcomes if code != 0]
    # Django's migrate takes no lock: the processes that lose the race fail on objects the winner made.
    assert failed, "five plain migrate processes all succeeded: Django's migrate is not expected to serialise them"
    assert all("already exists" in output or "duplicate key" in output for output in failed), [output[-1500:] for output in failed]
    print("plain race:", len(failed), "of 5 failed;", json.dumps(counts(plain)))
