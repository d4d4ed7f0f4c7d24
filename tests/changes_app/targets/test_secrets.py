"""Secrets of every kind (passwords in URLs, the HTTP token) never appear in what the product shows or
keeps: the configuration in the admin and the API (describe, the catalogue), the audit trail, the
run's results, or the log, even when a change's error quotes them."""

import json
import logging
import secrets

import pytest

from audit_app.models import AuditEntry
from audit_app.redaction import MASK
from changes_app.models import TargetSystem
from changes_app.targets.base import target_systems
from tests.changes_app.targets.conftest import MARIADB_SERVER, REDIS_URL, mariadb_connect
from tests.changes_app.targets.support import results, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_user(unique, redis_client):
    """A Redis user with a password of its own (an ACL user), removed after the test."""
    name, password = f"flk_{unique}", f"redis-pw-{secrets.token_hex(8)}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", f">{password}", f"~flk:{unique}:*", "+@all")
    yield REDIS_URL.replace("redis://", f"redis://{name}:{password}@"), password
    redis_client.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def mariadb_user(unique, mariadb_url):
    """A MariaDB user with a password, allowed on the test database, dropped after the test."""
    name, password = f"flk_{unique}", f"maria-pw-{secrets.token_hex(8)}"
    database = mariadb_url.rsplit("/", 1)[1]
    admin = mariadb_connect(MARIADB_SERVER)
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
        cursor.execute(f"GRANT ALL ON `{database}`.* TO '{name}'@'%'")
    yield mariadb_url.replace("mysql://root@", f"mysql://{name}:{password}@"), password
    with admin.cursor() as cursor:
        cursor.execute(f"DROP USER '{name}'@'%'")
    admin.close()


def test_secrets_of_every_kind_are_masked_everywhere_even_when_an_error_quotes_them(
    make_pipeline, unique, settings, monkeypatch, saas, redis_user, mariadb_user, caplog
):
    redis_url, redis_password = redis_user
    mariadb_url, mariadb_password = mariadb_user
    monkeypatch.setenv("FLAMINGOCK_TEST_REDIS_URL", redis_url)
    monkeypatch.setenv("FLAMINGOCK_TEST_MARIADB_URL", mariadb_url)
    token = saas.state.token
    caplog.set_level(logging.DEBUG)
    make_pipeline(
        {
            "flags": {
                "0001_flag.yaml": f"""
                    id: flag-{unique}
                    author: tests
                    target: flags
                    template: redis
                    apply: SET flk:{unique}:flag on
                """
            },
            "billing": {
                "0001_table.yaml": f"""
                    id: table-{unique}
                    author: tests
                    target: billing
                    template: sql
                    apply: CREATE TABLE s_{unique} (id integer)
                    rollback: DROP TABLE s_{unique}
                """
            },
            "events": {
                "0001_queue.yaml": f"""
                    id: queue-{unique}
                    author: tests
                    target: bus
                    template: rabbitmq
                    apply: {{declare_queue: flk.{unique}.q, auto_delete: true}}
                    rollback: {{delete_queue: flk.{unique}.q}}
                """
            },
            "payments": {
                "0001_leaky.py": f"""
                    import os

                    from changes_app.definitions import Change

                    class Leaky(Change):
                        id = "leaky-{unique}"
                        author = "tests"
                        target = "api"

                        def apply(self, http, context):
                            http.put("/v1/webhooks/leaky", json={{"url": "https://s.example.com/"}}, idempotency_key=context.idempotency_key)
                            # A careless change that quotes every secret it can read in its error.
                            raise RuntimeError(
                                "token=" + os.environ["FLAMINGOCK_TEST_SAAS_TOKEN"]
                                + " redis " + os.environ["FLAMINGOCK_TEST_REDIS_URL"]
                                + " maria " + os.environ["FLAMINGOCK_TEST_MARIADB_URL"]
                                + " bearer " + os.environ["FLAMINGOCK_TEST_SAAS_TOKEN"]
                            )
                """
            },
        }
    )

    run = run_pipeline()

    assert results(run) == {f"flag-{unique}": "APPLIED", f"table-{unique}": "APPLIED", f"queue-{unique}": "APPLIED", f"leaky-{unique}": "FAILED"}
    assert saas.state.requests[0]["authorised"], "the token reached the API, in its header"
    hidden = {"redis password": redis_password, "mariadb password": mariadb_password, "http token": token}
    error = AuditEntry.objects.get(change_id=f"leaky-{unique}", state="FAILED").error
    assert error.count(MASK) >= 4, error
    shown = {
        "describe()": json.dumps([system.describe() for system in target_systems().values()]),
        "catalogue rows": json.dumps(list(TargetSystem.objects.values_list("configuration", flat=True))),
        "audit trail": json.dumps(list(AuditEntry.objects.values_list("error", "rollback_error", "reason", "details")), default=str),
        "run results": json.dumps([run.results, run.status_reason]),
        "log": caplog.text,
    }
    leaks = [f"{secret} in {where}" for secret, value in hidden.items() for where, text in shown.items() if value in text]
    assert leaks == []
    assert "redis://flk_" in shown["audit trail"] and f"{MASK}@" in shown["audit trail"], "the URL stays readable, its password masked"


def test_http_target_refuses_a_token_written_in_settings(settings, targets):
    settings.FLAMINGOCK_TARGET_SYSTEMS = {**targets, "api": {**targets["api"], "token": "written-in-settings"}}

    from changes_app.targets.base import target_config_problems

    assert target_config_problems()["api"] == ["a token never goes in settings: name the environment variable holding it with 'token_env'"]
