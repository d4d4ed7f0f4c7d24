"""The anonymous throttle (docs/api.md, Throttling): callers without valid credentials are counted
and get 429 ``throttled`` in the API's error shape once the rate is spent, and the counts live in
the shared cache, so every process counts together (issue 19's finding: DRF refused them with 401
before any throttle ran, and each process kept its own counts)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from changes_app.models import Run
from tests.support.trails import written

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[3]
REDIS_SERVER = os.environ.get("FLAMINGOCK_TEST_REDIS", "redis://127.0.0.1:6379")
RATES = {"anon": "3/min", "user": "6000/min"}


@pytest.fixture
def three_a_minute(monkeypatch):
    # DRF reads the rates into the class when it is imported; the setting alone would not reach it.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", RATES)


def test_anonymous_callers_get_429_in_the_error_shape_once_the_rate_is_spent(three_a_minute):
    client = APIClient()
    before = written()
    assert [client.get("/api/v1/runs/").status_code for _ in range(3)] == [401, 401, 401]
    response = client.get("/api/v1/runs/")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60
    # A refusal writes nothing.
    assert written() == before


def test_guessing_tokens_is_throttled_like_any_anonymous_caller(three_a_minute):
    client = APIClient()
    statuses = []
    for _ in range(4):
        client.credentials(HTTP_AUTHORIZATION=f"Bearer flk_{uuid.uuid4().hex}")
        statuses.append(client.get("/api/v1/runs/").status_code)
    assert statuses == [401, 401, 401, 429]


def test_a_post_without_credentials_is_throttled_too_and_starts_nothing(three_a_minute):
    client = APIClient()
    statuses = [client.post("/api/v1/runs/", {}, format="json").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert Run.objects.count() == 0


def test_the_anonymous_rate_does_not_limit_a_caller_with_a_valid_token(three_a_minute, people):
    for _ in range(4):
        APIClient().get("/api/v1/runs/")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {people['compliance'].token}")
    assert client.get("/api/v1/targets/").status_code == 200


def test_each_client_address_has_its_own_count(three_a_minute):
    client = APIClient()
    for _ in range(3):
        client.get("/api/v1/runs/", REMOTE_ADDR="192.0.2.1")
    assert client.get("/api/v1/runs/", REMOTE_ADDR="192.0.2.1").status_code == 429
    assert client.get("/api/v1/runs/", REMOTE_ADDR="192.0.2.2").status_code == 401


def test_a_forged_forwarded_for_header_does_not_reset_the_count(three_a_minute):
    client = APIClient()
    statuses = [client.get("/api/v1/runs/", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]


@pytest.fixture
def shared_cache(settings):
    """The cache of REDIS_URL on the machine's Redis, under a key prefix of this test's own."""
    prefix = f"flk-serve-throttle-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is required at {REDIS_SERVER}: {error}")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": f"{REDIS_SERVER}/0", "KEY_PREFIX": prefix}}
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_processes_count_anonymous_callers_together_in_the_shared_cache(three_a_minute, shared_cache, tmp_path):
    client = APIClient()
    assert [client.get("/api/v1/runs/").status_code for _ in range(3)] == [401, 401, 401]
    # Another process of the same deployment (REDIS_URL set, as in production) sees the same counts.
    code = (
        "import django; django.setup()\n"
        "from rest_framework.test import APIClient\n"
        "response = APIClient().get('/api/v1/runs/')\n"
        "print(response.status_code, response.json()['error']['code'])\n"
    )
    env = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URL"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "flamingock_site.settings",
            "REDIS_URL": f"{REDIS_SERVER}/0",
            "FLAMINGOCK_CACHE_KEY_PREFIX": shared_cache,
            "FLAMINGOCK_API_THROTTLE_ANON": RATES["anon"],
            "FLAMINGOCK_VAR_DIR": str(tmp_path / "var"),
        }
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["429", "throttled"], result.stdout + result.stderr[-2000:]
