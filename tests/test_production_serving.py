"""gunicorn in production mode, as docs/operators.md deploys it (issue 19, "must show").

One gunicorn (``gunicorn -c gunicorn.conf.py``, two workers) serves the documented production
example (docs/production.env.example) against a PostgreSQL database of this module's own and a
private ``redis-server`` that the module starts and, at the end, stops. It checks that every unsafe
setting stops gunicorn from starting, that cookies are Secure, that static files are served with
far-future cache headers, the health endpoints (and readiness failing once Redis is gone), /metrics
behind its token, the anonymous throttle shared by the workers, and that one pipeline run of the
command line moves the outcome counter and the apply histogram.

tests/test_production_settings.py covers ``check --deploy`` and each refusal of ``check``; here the
refusals are those of a real gunicorn start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from base64 import b64encode
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.hashers import make_password

from tests.support.redis_server import RedisServer, free_port
from tests.support.trails import sql_change
from tests.test_production_settings import UNSAFE, base_env, example_variables

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("FLAMINGOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
HOST = "flamingock.example.com"
METRICS_TOKEN = secrets.token_urlsafe(32)
#: The proxy in front terminates TLS and says so; gunicorn trusts it from 127.0.0.1 (its default).
VIA_PROXY = {"Host": HOST, "X-Forwarded-Proto": "https"}
USERNAME, PASSWORD = "serve-admin", "serve-Pass-83c1"


def signing_key(path: Path) -> Path:
    raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    path.write_bytes(b64encode(raw))
    path.chmod(0o600)
    return path


def run(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, what: str, timeout: float = 120) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{what} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return stdout


class Site:
    """The deployment under test: its environment, its gunicorn, its Redis, its database."""

    def __init__(self, root: Path):
        self.root = root
        self.database = f"flk_serve_{uuid.uuid4().hex[:10]}"
        self.redis = RedisServer(root / "redis")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gunicorn: subprocess.Popen | None = None
        self.log = root / "gunicorn.log"
        self.pipeline = root / "pipeline"

    def env(self, **extra: str) -> dict[str, str]:
        """The documented example, filled in: a strong key, a signing key, this module's stores."""
        variables = example_variables()
        variables.update(
            DJANGO_SECRET_KEY=self.secret_key,
            FLAMINGOCK_AUDIT_SIGNING_KEY_FILE=str(self.key_file),
            DATABASE_URL=f"{PG_SERVER}/{self.database}",
            REDIS_URL=self.redis.url,
            # No mail leaves the test; the example's SMTP host does not exist.
            DJANGO_EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
            DJANGO_STATIC_ROOT=str(self.root / "static"),
            FLAMINGOCK_METRICS_TOKEN=METRICS_TOKEN,
            FLAMINGOCK_API_THROTTLE_ANON="5/min",
            FLAMINGOCK_STAGES="serve=flk_serve_changes",
            FLAMINGOCK_DISCOVER_APPS="0",
            PYTHONPATH=os.pathsep.join([str(self.pipeline), str(REPO)]),
            FLAMINGOCK_BIND=f"127.0.0.1:{self.port}",
            FLAMINGOCK_WEB_WORKERS="2",
            FLAMINGOCK_WEB_GRACEFUL_TIMEOUT="3",
        )
        variables.update(extra)
        return base_env(self.root, **variables)

    def start(self) -> Site:
        self.secret_key = secrets.token_urlsafe(64)
        self.key_file = signing_key(self.root / "audit-signing.key")
        package = self.pipeline / "flk_serve_changes"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "0001_table.yaml").write_text(sql_change("serve-table", "CREATE TABLE serve_table (id integer)", "DROP TABLE serve_table"))
        try:
            self.admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as error:
            pytest.fail(f"PostgreSQL is required at {PG_SERVER}: {error}")
        self.admin.execute(f'CREATE DATABASE "{self.database}"')
        self.redis.start()
        env = self.env()
        # The deploy steps of docs/operators.md, the two slow ones side by side.
        migrate = run("manage.py", "migrate", "--no-input", env=env)
        # collectstatic as deployed; the API's own assets (Swagger UI) are left out to save time.
        static = run("manage.py", "collectstatic", "--no-input", "-v0", "-i", "drf_spectacular_sidecar", "-i", "rest_framework", env=env)
        finish(migrate, "migrate")
        finish(static, "collectstatic")
        # The administrator, written as createsuperuser would (one process less to wait for).
        with psycopg.connect(f"{PG_SERVER}/{self.database}", autocommit=True) as db:
            db.execute(
                "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, is_active, date_joined)"
                " VALUES (%s, true, %s, '', '', 'a@example.com', true, true, now())",
                [make_password(PASSWORD), USERNAME],
            )
        with open(self.log, "w") as log:
            self.gunicorn = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "flamingock_site.wsgi:application"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.gunicorn.poll() is None, f"gunicorn exited ({self.gunicorn.returncode}):\n{self.log.read_text()[-4000:]}"
            try:
                if requests.get(f"{self.url}/health/live/", headers={"Host": HOST}, timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass  # not listening yet, or no worker has taken the connection yet
            assert time.monotonic() < deadline, f"gunicorn did not answer in 60 s:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            self.gunicorn.send_signal(signal.SIGTERM)
            try:
                self.gunicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.gunicorn.kill()
                self.gunicorn.wait()
        self.redis.kill()
        if getattr(self, "admin", None) is not None:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.admin.close()

    def get(self, path: str, *, headers: dict | None = None, **kwargs) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers={**VIA_PROXY, **(headers or {})}, allow_redirects=False, timeout=10, **kwargs)

    def metrics(self) -> str:
        response = self.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert response.status_code == 200, response.text[:500]
        return response.text


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    deployment = Site(tmp_path_factory.mktemp("serve"))
    try:
        yield deployment.start()
    finally:
        deployment.stop()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if match and match[1] == name and dict(re.findall(r'(\w+)="([^"]*)"', match[3] or "")) == labels:
            return float(match[4])
    return None


# -- refusals: gunicorn itself does not start ----------------------------------------------------------

#: One unsafe setting per refusal (tests/test_production_settings.py has every variant for ``check``).
REFUSALS = ["no secret key (the built-in default)", "DEBUG on", "empty ALLOWED_HOSTS", "no audit signing key", "the demo on"]


def test_gunicorn_refuses_to_start_and_names_each_unsafe_setting(site):
    env = site.env(FLAMINGOCK_BIND=f"127.0.0.1:{free_port()}")
    for case in REFUSALS:
        env = UNSAFE[case][0](env)
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "flamingock_site.wsgi:application"]
    try:
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("gunicorn started and served with every unsafe setting")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "refusing to serve in production mode" in output, output[-3000:]
    assert sorted(set(re.findall(r"flamingock\.E10\d", output))) == sorted(UNSAFE[case][1] for case in REFUSALS), output[-3000:]


# -- serving ---------------------------------------------------------------------------------------------


def cookies_of(response: requests.Response) -> dict[str, str]:
    # requests keeps a Secure cookie for https:// only; the proxy in front would speak HTTPS.
    return {cookie.name: cookie.value for cookie in response.cookies}


def test_session_and_csrf_cookies_are_secure_and_sessions_work_across_workers(site):
    login = site.get("/admin/login/")
    assert login.status_code == 200
    assert re.search(r"csrftoken=[^,]*; .*Secure", login.headers["Set-Cookie"]), login.headers["Set-Cookie"]
    jar = cookies_of(login)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)[1]
    response = requests.post(
        f"{site.url}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": USERNAME, "password": PASSWORD},
        headers={**VIA_PROXY, "Referer": f"https://{HOST}/admin/login/", "Cookie": f"csrftoken={jar['csrftoken']}"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:2000]
    assert re.search(r"sessionid=[^,]*; .*HttpOnly", response.headers["Set-Cookie"]) and "Secure" in response.headers["Set-Cookie"]
    session = cookies_of(response)["sessionid"]
    # The cached_db session (in Redis and the database) is found by whichever worker answers next.
    for _ in range(4):
        page = site.get("/admin/", headers={"Cookie": f"sessionid={session}", "Connection": "close"})
        assert page.status_code == 200 and USERNAME in page.text


def test_static_files_are_served_compressed_with_far_future_cache_headers(site):
    manifest = (site.root / "static" / "staticfiles.json").read_text()
    hashed = re.search(r'"admin/css/base\.css": "([^"]+)"', manifest)[1]
    response = site.get(f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert "max-age=315360000" in response.headers["Cache-Control"] and "immutable" in response.headers["Cache-Control"]
    assert response.headers.get("Content-Encoding") == "gzip"
    assert response.headers["Content-Type"].startswith("text/css")


def test_health_answers_plain_http_while_everything_else_is_redirected_to_https(site):
    plain = {"Host": HOST}
    assert requests.get(f"{site.url}/health/live/", headers=plain, timeout=10).status_code == 200
    assert requests.get(f"{site.url}/health/ready/", headers=plain, timeout=10).status_code == 200
    redirected = requests.get(f"{site.url}/admin/", headers=plain, allow_redirects=False, timeout=10)
    assert redirected.status_code == 301 and redirected.headers["Location"] == f"https://{HOST}/admin/"
    # HSTS on what is served over HTTPS.
    assert "max-age=31536000" in site.get("/admin/login/").headers["Strict-Transport-Security"]


def test_the_api_schema_is_refused_to_anonymous_users(site):
    assert site.get("/api/v1/schema/").status_code == 401
    assert site.get("/api/v1/docs/").status_code == 401


def test_anonymous_api_callers_are_throttled_across_workers_in_redis(site):
    private = redis.Redis(port=site.redis.port)
    for key in private.scan_iter("flamingock:*throttle_anon*"):
        private.delete(key)  # earlier tests of this module were anonymous callers too
    statuses = [site.get("/api/v1/runs/", headers={"Connection": "close"}).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    throttled = site.get("/api/v1/runs/")
    assert throttled.json()["error"]["code"] == "throttled" and int(throttled.headers["Retry-After"]) > 0
    assert private.keys("flamingock:*throttle_anon*"), "the throttle counts are not in the shared Redis"


# -- metrics -----------------------------------------------------------------------------------------------


def test_metrics_refuse_anonymous_callers_and_answer_the_token(site):
    anonymous = site.get("/metrics")
    assert anonymous.status_code == 401 and "flamingock_" not in anonymous.text
    assert site.get("/metrics", headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    text = site.metrics()
    assert "# TYPE flamingock_runs_total counter" in text and "django_http_requests_latency" in text


def test_a_pipeline_run_of_the_command_line_moves_the_outcome_counter_and_the_apply_histogram(site):
    before = site.metrics()
    assert sample(before, "flamingock_runs_total", outcome="SUCCEEDED", kind="PIPELINE") is None
    assert sample(before, "flamingock_change_apply_duration_seconds_count", outcome="applied") is None
    # Production mode in an environment without approvals, so that the run applies its change.
    cli = run("manage.py", "flamingock", "run", env=site.env(FLAMINGOCK_ENVIRONMENT="staging", FLAMINGOCK_PRODUCTION="1"))
    finish(cli, "flamingock run")
    after = site.metrics()
    assert sample(after, "flamingock_runs_total", outcome="SUCCEEDED", kind="PIPELINE") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_count", outcome="applied") == 1
    assert sample(after, "flamingock_change_apply_duration_seconds_bucket", outcome="applied", le="+Inf") == 1
    assert sample(after, "flamingock_audit_entries_total") > sample(before, "flamingock_audit_entries_total")


def test_the_access_log_is_json_and_redacted(site):
    secret = f"serve-{secrets.token_hex(8)}"
    assert site.get(f"/health/live/?token={secret}").status_code == 200
    deadline = time.monotonic() + 10
    while "/health/live/?token=" not in site.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = site.log.read_text()
    assert secret not in log
    line = next(line for line in log.splitlines() if "/health/live/?token=" in line)
    record = json.loads(line)  # FLAMINGOCK_LOG_FORMAT=json, as the example sets it
    assert record["logger"] == "gunicorn.access" and "token=********" in record["message"]


def test_gunicorn_conf_refuses_a_malformed_number(tmp_path):
    env = base_env(tmp_path, FLAMINGOCK_WEB_WORKERS="many")
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config", "flamingock_site.wsgi:application"]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "FLAMINGOCK_WEB_WORKERS must be a whole number, not 'many'" in result.stdout + result.stderr


# -- last: Redis goes away ---------------------------------------------------------------------------------


def test_ready_is_503_once_redis_is_stopped_while_live_still_answers(site):
    assert site.get("/health/ready/").status_code == 200
    site.redis.kill()
    ready = site.get("/health/ready/", headers={"Accept": "application/json"})
    assert ready.status_code == 503
    assert {name.split("(")[0]: outcome for name, outcome in ready.json().items()}["Database"] == "OK"
    assert site.get("/health/live/").status_code == 200
