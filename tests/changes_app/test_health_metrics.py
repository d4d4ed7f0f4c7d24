"""Health endpoints, metrics, logs and error reports (docs/operators.md, "Health and metrics", "Logs
and errors"; docs/semantics.md §13.11 names the health paths).

Readiness is the database and the cache only; the detail adds the broker, a worker that answers,
migrations and the last chain verification. Metrics are read from the rows at scrape time, so a run
of another process counts. /metrics answers only a token or an allowed address.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from django.utils import timezone
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from audit_app.models import AuditEntry, ChainHead, Verification
from audit_app.redaction import MASK
from audit_app.services import Actor
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ChangeRequest, Finding, Run, TargetSystem
from changes_app.observability import health
from changes_app.observability.logs import RedactingJsonFormatter, sentry_before_send
from changes_app.observability.metrics import FlamingockCollector
from changes_app.services.catalogue import target_systems_sync
from tests.conftest import manage
from tests.support.redis_server import free_port
from tests.support.trails import run_pipeline, sql_change
from tests.support.workers import Broker, workers_start, workers_stop

REPO = Path(__file__).resolve().parents[2]
TOKEN = "serve-metrics-token-0123456789abcdef"
#: A Celery app whose broker is a port nobody listens on, with a password in its URL. Not the current
#: app: shared tasks follow the current app, and every later test would queue to this dead broker.
DEAD_BROKER_PASSWORD = "serve-broker-pw-8d1c"
dead_broker_app = Celery("serve-dead-broker", broker=f"redis://:{DEAD_BROKER_PASSWORD}@127.0.0.1:{free_port()}/0", set_as_current=False)


def get_json(client: Client, path: str, **headers):
    response = client.get(path, HTTP_ACCEPT="application/json", **headers)
    return response.status_code, (response.json() if response["Content-Type"].startswith("application/json") else None)


def results_by_check(body: dict) -> dict[str, str]:
    """``{"Database(alias='default')": "OK", ...}`` -> ``{"Database": "OK", ...}``."""
    return {name.split("(", 1)[0]: outcome for name, outcome in body.items()}


@pytest.fixture
def dead_cache(settings):
    """The cache on a Redis that is not there (a port nobody listens on)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


# -- /health/live/ ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_live_answers_without_touching_the_database_or_the_cache(django_assert_num_queries, dead_cache):
    with django_assert_num_queries(0):
        response = Client().get("/health/live/")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")


# -- /health/ready/ ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ready_is_200_with_the_database_and_the_cache():
    status, body = get_json(Client(), "/health/ready/")
    assert status == 200
    assert results_by_check(body) == {"Database": "OK", "Cache": "OK"}


@pytest.mark.django_db
def test_ready_is_503_when_the_cache_does_not_answer(dead_cache):
    status, body = get_json(Client(), "/health/ready/")
    assert status == 503
    checks = results_by_check(body)
    assert checks["Database"] == "OK" and checks["Cache"] != "OK"


@pytest.mark.django_db
def test_ready_does_not_wait_for_workers_or_a_verification_but_detail_reports_them():
    # No worker runs and the chain was never verified: the web node stays in, the detail says why.
    assert get_json(Client(), "/health/ready/")[0] == 200
    status, body = get_json(Client(), "/health/detail/")
    assert status == 503
    checks = results_by_check(body)
    assert set(checks) == {"Database", "Cache", "Broker", "WorkerAnswered", "MigrationsApplied", "VerificationRecent"}
    assert checks["Database"] == checks["Cache"] == checks["MigrationsApplied"] == "OK"
    assert checks["WorkerAnswered"].startswith("Unavailable")
    assert checks["VerificationRecent"] == "Warning: the audit chain was never verified"


def test_health_html_page_renders_for_a_person():
    response = Client().get("/health/live/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200


# -- the detail's checks, one by one ------------------------------------------------------------------


def verified(*, ago: float, ok: bool = True) -> Verification:
    return Verification.objects.create(mode="full", ok=ok, performed_at=timezone.now() - datetime.timedelta(seconds=ago))


@pytest.mark.django_db
def test_verification_check_passes_after_a_recent_intact_verification():
    verified(ago=60)
    health.VerificationRecent().run()


@pytest.mark.django_db
def test_verification_check_fails_when_the_last_one_is_too_old(settings):
    settings.FLAMINGOCK_HEALTH_VERIFICATION_MAX_AGE = 3600
    verified(ago=7200)
    with pytest.raises(ServiceWarning, match="7200 s old"):
        health.VerificationRecent().run()


@pytest.mark.django_db
def test_verification_check_fails_when_the_last_one_found_the_chain_broken():
    verified(ago=7200)
    verified(ago=10, ok=False)
    with pytest.raises(ServiceUnavailable, match="broken"):
        health.VerificationRecent().run()


@pytest.mark.django_db
def test_migrations_check_names_a_migration_that_is_not_applied():
    health.MigrationsApplied().run()
    last = MigrationRecorder.Migration.objects.filter(app="changes_app").order_by("-id").values_list("name", flat=True).first()
    MigrationRecorder(connection).record_unapplied("changes_app", last)
    with pytest.raises(ServiceUnavailable, match=f"changes_app.{last}"):
        health.MigrationsApplied().run()


def test_broker_check_fails_without_naming_the_brokers_password(settings):
    settings.FLAMINGOCK_CELERY_APP = f"{__name__}.dead_broker_app"
    with pytest.raises(ServiceUnavailable) as refused:
        health.Broker().run()
    assert DEAD_BROKER_PASSWORD not in str(refused.value)


@pytest.mark.slow
def test_worker_check_passes_once_a_real_worker_answers(subprocess_env, tmp_path, unique):
    broker = Broker(f"serve-{unique}")
    env = subprocess_env(**broker.env(), FLAMINGOCK_DISCOVER_APPS="0", FLAMINGOCK_STAGES="")
    try:
        with broker.publishing():
            with pytest.raises(ServiceUnavailable):
                health.WorkerAnswered().run()
            workers = workers_start([f"serve-{unique}@health"], env_for=lambda name: env, log_dir=tmp_path / "workers")
            try:
                health.WorkerAnswered().run()
                health.Broker().run()
            finally:
                workers_stop(workers)
    finally:
        broker.cleanup()


# -- /metrics: who may read it -----------------------------------------------------------------------


@pytest.mark.django_db
def test_production_mode_with_neither_token_nor_allow_list_answers_404(settings):
    settings.FLAMINGOCK_PRODUCTION = True
    settings.FLAMINGOCK_METRICS_TOKEN, settings.FLAMINGOCK_METRICS_ALLOWED_IPS = "", []
    response = Client().get("/metrics")
    assert response.status_code == 404
    assert b"flamingock_" not in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_metrics_refuse_a_caller_without_the_token(settings, authorization):
    settings.FLAMINGOCK_PRODUCTION = True
    settings.FLAMINGOCK_METRICS_TOKEN = TOKEN
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = Client().get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"flamingock_" not in response.content


@pytest.mark.django_db
def test_metrics_answer_the_token(settings):
    settings.FLAMINGOCK_PRODUCTION = True
    settings.FLAMINGOCK_METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"flamingock_runs_total" in response.content or b"# TYPE flamingock_runs_total counter" in response.content
    assert b"django_http_requests" in response.content


@pytest.mark.django_db
def test_metrics_answer_an_allowed_address_and_refuse_another(settings):
    settings.FLAMINGOCK_PRODUCTION = True
    settings.FLAMINGOCK_METRICS_ALLOWED_IPS = ["10.1.0.0/16", "192.0.2.7"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="192.0.2.7").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.2.0.1").get("/metrics").status_code == 403
    # X-Forwarded-For names no one: the connecting address decides.
    assert Client(REMOTE_ADDR="10.2.0.1").get("/metrics", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 403


@pytest.mark.django_db
def test_outside_production_mode_unconfigured_metrics_answer_loopback_only(settings):
    settings.FLAMINGOCK_PRODUCTION = False
    settings.FLAMINGOCK_METRICS_TOKEN, settings.FLAMINGOCK_METRICS_ALLOWED_IPS = "", []
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 403


# -- /metrics: what it says --------------------------------------------------------------------------


def scrape(settings) -> str:
    settings.FLAMINGOCK_METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return response.content.decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when the scrape has no such sample."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[3] or ""))
        if found == labels:
            return float(match[4])
    return None


@pytest.mark.django_db(transaction=True)
def test_a_run_moves_the_outcome_counter_and_the_apply_histogram(settings, make_pipeline, unique):
    make_pipeline(
        {
            "main": {
                "0001_ok.yaml": sql_change(f"ok-{unique}", f"CREATE TABLE serve_ok_{unique} (id integer)"),
                "0002_bad.yaml": sql_change(f"bad-{unique}", "CREATE TABLE serve_bad ( this is not sql"),
            }
        }
    )
    before = scrape(settings)
    assert sample(before, "flamingock_runs_total", outcome="FAILED", kind="PIPELINE") is None
    run = run_pipeline()
    assert run.status == Run.Status.FAILED
    after = scrape(settings)
    assert sample(after, "flamingock_runs_total", outcome="FAILED", kind="PIPELINE") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_count", outcome="applied") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_count", outcome="failed") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_bucket", outcome="applied", le="+Inf") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_bucket", outcome="applied", le="3600.0") == 1
    applied_ms = AuditEntry.objects.get(change_id=f"ok-{unique}", event="change.applied").duration_ms
    assert sample(after, "flamingock_change_apply_duration_seconds_sum", outcome="applied") == pytest.approx(applied_ms / 1000)
    assert sample(after, "flamingock_audit_entries_total") == ChainHead.objects.get().seq == AuditEntry.objects.count()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_run_of_another_process_counts_where_metrics_are_scraped(settings, make_pipeline, subprocess_env, unique):
    make_pipeline({"main": {"0001_ok.yaml": sql_change(f"cli-{unique}", f"CREATE TABLE serve_cli_{unique} (id integer)")}})
    result = manage("flamingock", "run", env=subprocess_env())
    assert result.returncode == 0, result.stdout + result.stderr
    text = scrape(settings)
    assert sample(text, "flamingock_runs_total", outcome="SUCCEEDED", kind="PIPELINE") == 1
    assert sample(text, "flamingock_change_apply_duration_seconds_count", outcome="applied") == 1


@pytest.mark.django_db
def test_pending_requests_and_the_age_of_the_oldest(settings, targets):
    target_systems_sync()
    journal = TargetSystem.objects.get(name="journal")
    assert sample(scrape(settings), "flamingock_requests_pending") == 0
    for ago, status in ((600, ChangeRequest.Status.PENDING), (60, ChangeRequest.Status.PENDING), (9000, ChangeRequest.Status.REJECTED)):
        ChangeRequest.objects.create(
            kind=ChangeRequest.Kind.UNDO,
            change_id=f"c-{uuid.uuid4().hex[:6]}",
            checksum="0" * 64,
            environment="dev",
            target_system=journal,
            status=status,
            reason="metrics",
            requester_name="someone",
            required_approvals=1,
            expires_at=timezone.now() + datetime.timedelta(hours=1),
            created_at=timezone.now() - datetime.timedelta(seconds=ago),
        )
    text = scrape(settings)
    assert sample(text, "flamingock_requests_pending") == 2
    assert 600 <= sample(text, "flamingock_requests_pending_oldest_age_seconds") < 660


@pytest.mark.django_db
def test_open_findings_by_kind_leave_resolved_ones_out(settings):
    for kind, status in (
        (Finding.Kind.CHECKSUM_MISMATCH, Finding.Status.OPEN),
        (Finding.Kind.CHECKSUM_MISMATCH, Finding.Status.OPEN),
        (Finding.Kind.DEAD_RUN, Finding.Status.ACKNOWLEDGED),
        (Finding.Kind.DEAD_RUN, Finding.Status.RESOLVED),
    ):
        Finding.objects.create(
            fingerprint=uuid.uuid4().hex, check_name=Finding.Check.DEFINITION, kind=kind, environment="dev", summary="s", status=status
        )
    text = scrape(settings)
    assert sample(text, "flamingock_findings_open", kind="CHECKSUM_MISMATCH", status="OPEN") == 2
    assert sample(text, "flamingock_findings_open", kind="DEAD_RUN", status="ACKNOWLEDGED") == 1
    assert sample(text, "flamingock_findings_open", kind="DEAD_RUN", status="RESOLVED") is None


@pytest.mark.django_db(transaction=True)
def test_seconds_the_lock_has_been_held(settings):
    backend = lock_backend_shared()
    assert sample(scrape(settings), "flamingock_lock_held_seconds", lock=backend.name) == 0
    lease = backend.try_acquire(run_id=uuid.uuid4(), actor=Actor(name="metrics-test"))
    assert lease is not None
    try:
        held = sample(scrape(settings), "flamingock_lock_held_seconds", lock=backend.name)
        assert 0 <= held < 30
    finally:
        backend.force_release()


@pytest.mark.django_db
def test_seconds_since_the_last_verification(settings):
    text = scrape(settings)
    assert sample(text, "flamingock_audit_verification_age_seconds") == float("inf")
    assert sample(text, "flamingock_audit_verification_ok") == 0
    verified(ago=300)
    text = scrape(settings)
    assert 300 <= sample(text, "flamingock_audit_verification_age_seconds") < 360
    assert sample(text, "flamingock_audit_verification_ok") == 1


@pytest.mark.django_db
def test_a_family_that_cannot_be_read_is_left_out_and_counted(settings, monkeypatch):
    def broken(self):
        raise RuntimeError("the lock store is down")
        yield  # pragma: no cover

    monkeypatch.setattr(FlamingockCollector, "lock", broken)
    text = scrape(settings)
    assert sample(text, "flamingock_metrics_errors") == 1
    assert "flamingock_lock_held_seconds" not in text
    assert sample(text, "flamingock_requests_pending") == 0


# -- logs and error reports ------------------------------------------------------------------------------

SECRET = "serve-Secret-7f3a9c"


def child(code: str, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """``code`` run after ``django.setup()`` in a clean child process with ``variables``."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update({"DJANGO_SETTINGS_MODULE": "flamingock_site.settings", "FLAMINGOCK_VAR_DIR": str(tmp_path / "var"), **variables})
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


CELERY_FAILURE = f"""
import logging
try:
    raise RuntimeError("connect failed: postgres://app:{SECRET}@db/x password={SECRET}")
except RuntimeError as error:
    # What Celery's tracer logs when a task raises (celery/app/trace.py), extra fields included.
    context = {{"hostname": "w1", "id": "t-1", "name": "flamingock.run_execute", "exc": repr(error), "args": "['{SECRET}']", "kwargs": "{{}}"}}
    logging.getLogger("celery.app.trace").error(
        "Task %(name)s[%(id)s] raised unexpected: %(exc)s", context, exc_info=True, extra={{"data": context}}
    )
"""


def test_json_logs_carry_a_failed_tasks_record_with_every_secret_redacted(tmp_path):
    result = child(CELERY_FAILURE, tmp_path, FLAMINGOCK_LOG_FORMAT="json", FLAMINGOCK_SECRET_ENV_VARS="SERVE_SECRET", SERVE_SECRET=SECRET)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stderr[-3000:]
    record = json.loads(lines[0])
    assert record["level"] == "ERROR" and record["logger"] == "celery.app.trace"
    assert record["message"].startswith("Task flamingock.run_execute[t-1] raised unexpected")
    assert "RuntimeError" in record["exc_info"] and record["data"]["name"] == "flamingock.run_execute"
    assert SECRET not in result.stderr
    assert MASK in record["message"] and MASK in record["exc_info"] and MASK in record["data"]["args"]


def test_text_logs_of_a_failed_task_are_redacted_too(tmp_path):
    result = child(CELERY_FAILURE, tmp_path, FLAMINGOCK_SECRET_ENV_VARS="SERVE_SECRET", SERVE_SECRET=SECRET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raised unexpected" in result.stderr and "RuntimeError" in result.stderr
    assert SECRET not in result.stderr and MASK in result.stderr


def test_an_unknown_log_format_is_refused_with_its_name(tmp_path):
    result = child("", tmp_path, FLAMINGOCK_LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "FLAMINGOCK_LOG_FORMAT must be 'text' or 'json', not 'xml'" in result.stderr


def test_the_json_formatter_redacts_values_it_turns_into_strings_itself():
    formatter = RedactingJsonFormatter("%(message)s")

    class Opaque:
        def __str__(self):
            return "dsn=redis://u:hunter2@cache/0"

    record = logging.LogRecord("flamingock", logging.WARNING, __file__, 1, "plain", None, None)
    record.target = Opaque()
    output = formatter.format(record)
    assert "hunter2" not in output and json.loads(output)["target"] == f"dsn=redis://u:{MASK}@cache/0"


def test_sentry_events_are_scrubbed_everywhere_a_string_can_be():
    event = {
        "message": f"token={SECRET}",
        "exception": {"values": [{"type": "OperationalError", "value": f"postgres://u:{SECRET}@db/x"}]},
        "breadcrumbs": {"values": [{"message": f"password={SECRET}", "data": {"url": f"https://a:{SECRET}@h/"}}]},
        "extra": {"reasons": [f"api_key={SECRET}", 3, None]},
        "level": "error",
    }
    scrubbed = sentry_before_send(event, {})
    assert SECRET not in json.dumps(scrubbed)
    assert scrubbed["level"] == "error" and scrubbed["extra"]["reasons"][1:] == [3, None]
    assert scrubbed["exception"]["values"][0]["value"] == f"postgres://u:{MASK}@db/x"


def test_sentry_is_set_up_from_sentry_dsn_collecting_no_personal_data(tmp_path):
    code = (
        "import json, sentry_sdk\n"
        "options = sentry_sdk.get_client().options\n"
        "print(json.dumps({'collection': options['data_collection'], 'before_send': options['before_send'].__module__ + '.' + options['before_send'].__name__,"
        " 'integrations': sorted(type(i).__name__ for i in sentry_sdk.get_client().integrations.values()), 'environment': options['environment']}))\n"
    )
    result = child(code, tmp_path, SENTRY_DSN="https://public@127.0.0.1:9/1", FLAMINGOCK_ENVIRONMENT="staging")
    assert result.returncode == 0, result.stderr[-3000:]
    options = json.loads(result.stdout.strip().splitlines()[-1])
    collection = options["collection"]
    assert collection["user_info"] is False and collection["http_bodies"] == [] and collection["stack_frame_variables"] is False
    assert collection["cookies"]["mode"] == collection["url_query_params"]["mode"] == collection["http_headers"]["request"]["mode"] == "off"
    assert options["before_send"] == "changes_app.observability.logs.sentry_before_send"
    assert {"DjangoIntegration", "CeleryIntegration"} <= set(options["integrations"])
    assert options["environment"] == "staging"


def test_without_sentry_dsn_sentry_is_not_set_up(tmp_path):
    result = child("import sentry_sdk; print(sentry_sdk.get_client().is_active())", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
