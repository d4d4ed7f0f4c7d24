"""Upgrading a database made by the previous release (commit e337a22) to the current code.

The fixture (tests/fixtures/release_e337a22/, how it was made in its README.md) is restored into a
fresh database of the kind this pass of the suite uses: a scratch PostgreSQL database named with
the pid when ``DATABASE_URL`` points at PostgreSQL, a temporary SQLite file otherwise. Everything
then runs as child ``manage.py`` processes pointed at that database, as an operator's deploy would:
``migrate`` to head, the audit chain and its signed checkpoint verified, the recorded API token
accepted by the API, and every enabled periodic task known to Celery. A server that is missing
fails the test; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.db.migrations.loader import MigrationLoader

from changes_app.services.schedules import DEFAULT_SCHEDULES

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release_e337a22"
METADATA = json.loads((FIXTURE / "metadata.json").read_text())

pytestmark = pytest.mark.slow

#: Run inside the upgraded instance: the API's answers to the recorded token, a wrong one and none.
API_PROBE = """
import json, os
from django.test import Client
client = Client()
statuses = {}
token = os.environ["UPGRADE_PROBE_TOKEN"]
for label, header in (("recorded", "Bearer " + token), ("token_scheme", "Token " + token),
                      ("wrong", "Bearer flk_" + "x" * 43), ("none", None)):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    statuses[label] = client.get("/api/v1/targets/", **extra).status_code
print(json.dumps(statuses))
"""

#: Run inside the upgraded instance: the enabled periodic tasks and the tasks Celery registered.
BEAT_PROBE = """
import json
from django_celery_beat.models import PeriodicTask
from flamingock_site.celery import app
app.loader.import_default_modules()
print(json.dumps({
    "enabled": sorted(PeriodicTask.objects.filter(enabled=True).values_list("name", "task")),
    "registered": sorted(app.tasks),
}))
"""


def _vendor() -> str:
    return settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]


def _backend() -> dict:
    return METADATA["backends"]["postgresql" if _vendor() == "postgresql" else "sqlite"]


def manage(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _last_json(done: subprocess.CompletedProcess):
    """``shell -c`` may print a banner before the probe's one JSON line."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _base_env(var_dir: Path) -> dict[str, str]:
    # Only the restored database and the fixture's signing key may shape the upgraded instance.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLAMINGOCK_") and key not in {"DATABASE_URL", "REDIS_URL"}}
    env["FLAMINGOCK_VAR_DIR"] = str(var_dir)
    env["FLAMINGOCK_DEMO"] = "1"  # the release was recorded with the demo's example pipeline
    env["FLAMINGOCK_AUDIT_SIGNING_KEY_FILE"] = str(FIXTURE / METADATA["audit_signing_key_file"])
    return env


def _restore_postgresql(env: dict[str, str]):
    database = settings.DATABASES["default"]
    server = {
        "host": database.get("HOST") or "127.0.0.1",
        "port": str(database.get("PORT") or 5432),
        "user": database.get("USER") or "postgres",
        "password": database.get("PASSWORD") or "",
    }
    name = f"flk_upgrade_{os.getpid()}"
    if shutil.which("psql") is None:
        pytest.fail("psql is required to restore the PostgreSQL fixture (plain pg_dump SQL with COPY blocks)")
    try:
        admin = psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **{k: v for k, v in server.items() if v})
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is required at {server['host']}:{server['port']}: {error}")
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    password = f":{quote(server['password'], safe='')}" if server["password"] else ""
    url = f"postgresql://{quote(server['user'], safe='')}{password}@{server['host']}:{server['port']}/{name}"
    restored = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(FIXTURE / _backend()["dump"])], capture_output=True, text=True, timeout=120
    )
    assert restored.returncode == 0, f"restoring {_backend()['dump']} failed:\n{restored.stderr}"
    env["DATABASE_URL"] = url
    return lambda: (admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), admin.close())


def _restore_sqlite(env: dict[str, str], directory: Path):
    path = directory / "restored.sqlite3"
    target = sqlite3.connect(path)
    try:
        target.executescript((FIXTURE / _backend()["dump"]).read_text(encoding="utf-8"))
    finally:
        target.close()
    env["FLAMINGOCK_SQLITE_PATH"] = str(path)
    return lambda: None


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """The previous release's database, restored and not yet migrated: the environment of its instance."""
    directory = tmp_path_factory.mktemp("upgrade")
    env = _base_env(directory / "var")
    drop = _restore_postgresql(env) if _vendor() == "postgresql" else _restore_sqlite(env, directory)
    yield env
    drop()


@pytest.fixture(scope="module")
def upgraded(restored):
    """The restored database after ``migrate``; the migration's outcome is asserted by its own test."""
    done = manage("migrate", "--no-input", env=restored)
    return restored, done


def test_migrate_brings_the_previous_release_database_to_head(upgraded):
    env, done = upgraded
    assert done.returncode == 0, f"migrate failed on the restored database:\n{done.stdout}\n{done.stderr}"
    check = manage("migrate", "--check", env=env)
    assert check.returncode == 0, f"unapplied migrations remain after migrate:\n{check.stdout}\n{check.stderr}"


def test_the_upgraded_audit_chain_and_its_signed_checkpoint_verify(upgraded):
    env, _ = upgraded
    done = manage("flamingock", "audit", "verify", "--json", env=env)
    assert done.returncode == 0, f"audit verify after the upgrade:\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["head_seq"] >= _backend()["audit_head_seq"]
    assert report["entries_checked"] >= _backend()["audit_head_seq"]
    partial = manage("flamingock", "audit", "verify", "--from-checkpoint", "--json", env=env)
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert json.loads(partial.stdout)["checkpoint_seq"] == _backend()["checkpoint"]["seq"]


def test_audit_verify_refuses_the_restored_checkpoint_under_a_key_that_did_not_sign_it(upgraded, tmp_path):
    # The negative control: verify really reads the restored checkpoint, so a passing verify above means something.
    env, _ = upgraded
    other_key = tmp_path / "other.key"
    other_key.write_text("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\n")  # base64 of 32 fixed bytes, not the fixture's key
    done = manage("flamingock", "audit", "verify", "--json", env={**env, "FLAMINGOCK_AUDIT_SIGNING_KEY_FILE": str(other_key)})
    assert done.returncode == 6, f"expected an integrity failure (exit 6), got {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert _backend()["checkpoint"]["key_id"] in done.stdout, "the refusal should name the key of the restored checkpoint"


def test_the_recorded_api_token_still_authenticates_and_a_wrong_one_does_not(upgraded):
    env, _ = upgraded
    token = _backend()["api_token"]["plaintext"]
    statuses = _last_json(manage("shell", "-c", API_PROBE, env={**env, "UPGRADE_PROBE_TOKEN": token}))
    assert statuses == {"recorded": 200, "token_scheme": 200, "wrong": 401, "none": 401}


def test_every_enabled_beat_schedule_names_a_task_registered_in_celery(upgraded):
    env, _ = upgraded
    probe = _last_json(manage("shell", "-c", BEAT_PROBE, env=env))
    enabled = {name: task for name, task in probe["enabled"]}
    recorded = {schedule["name"]: schedule["task"] for schedule in _backend()["periodic_tasks"] if schedule["enabled"]}
    kept = {name: enabled.get(name) for name in recorded}
    assert kept == recorded, "the upgrade changed the periodic tasks the previous release scheduled"
    # What the upgrade adds is this release's new default schedules, and nothing else.
    added = {name: task for name, task in enabled.items() if name not in recorded}
    assert added == {name: task for name, (task, _) in DEFAULT_SCHEDULES.items() if name not in recorded}
    unregistered = sorted(task for task in enabled.values() if task not in probe["registered"])
    assert not unregistered, f"beat would send tasks no worker knows: {unregistered}"
    assert all(task.startswith("flamingock.") for task in enabled.values())


def test_the_previous_release_content_is_readable_after_the_upgrade(upgraded):
    env, _ = upgraded
    plan = manage("flamingock", "plan", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    states = [(change["id"], change["latest_state"]) for change in json.loads(plan.stdout)["changes"]]
    assert states == [(state["change_id"], state["state"]) for state in _backend()["change_states"]]
    tokens = manage("flamingock", "token", "list", "--json", env=env)
    assert tokens.returncode == 0, tokens.stderr
    recorded = _backend()["api_token"]
    assert {"id": recorded["id"], "user": recorded["user"], "prefix": recorded["plaintext"][:12], "revoked": False} in [
        {key: token[key] for key in ("id", "user", "prefix", "revoked")} for token in json.loads(tokens.stdout)
    ]


def test_the_upgraded_pipeline_validates_with_no_checksum_drift(upgraded):
    # Python changes are checksummed by their module text, so an edited import in examples/ would block every upgraded stage.
    env, _ = upgraded
    done = manage("flamingock", "validate", "--json", env=env)
    verdict = json.loads(done.stdout)
    assert done.returncode == 0, f"validate after the upgrade exited {done.returncode}: {verdict}"
    assert verdict["checksum_drift"] == [] and verdict["missing_from_code"] == [] and verdict["pending"] == []


def test_makemigrations_finds_no_model_change_without_a_migration(restored, tmp_path):
    # An empty database of its own: the check is about the code, and must not depend on the restored history.
    env = {**restored, "FLAMINGOCK_SQLITE_PATH": str(tmp_path / "empty.sqlite3")}
    env.pop("DATABASE_URL", None)
    done = manage("makemigrations", "--check", "--dry-run", env=env)
    assert done.returncode == 0, f"models changed without a migration:\n{done.stdout}\n{done.stderr}"


def test_each_app_migration_graph_has_exactly_one_leaf():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    loader.graph.validate_consistency()
    assert loader.detect_conflicts() == {}
    leaves = {app: loader.graph.leaf_nodes(app) for app in sorted(loader.migrated_apps)}
    assert {app: len(nodes) for app, nodes in leaves.items() if len(nodes) != 1} == {}, leaves
    assert {"audit_app", "changes_app"} <= set(leaves)
