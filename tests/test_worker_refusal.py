"""A Celery worker refuses to start in production mode while a refusal holds, as gunicorn does
(flamingock_site/celery.py, flamingock_site/wsgi.py; docs/operators.md, "Production checklist").

Each test starts a real ``celery worker`` process with a clean environment (the documented
production example, tests/test_production_settings.py) and one unsafe setting.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_production_settings import REPO, UNSAFE, base_env, example_variables

pytestmark = pytest.mark.slow

#: Seconds a worker may take to refuse; one that is still running then has started.
REFUSAL_SECONDS = 60
#: One unsafe setting per refusal (flamingock.E101-E105): each worker start costs seconds.
ONE_PER_REFUSAL = list({error_id: case for case, (_, error_id) in reversed(UNSAFE.items())}.values())


@pytest.fixture
def production_env(tmp_path) -> dict[str, str]:
    """The documented production example with a strong key and a signing key file of this test."""
    key = tmp_path / "audit-signing.key"
    raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    key.write_bytes(base64.b64encode(raw))
    key.chmod(0o600)
    variables = {**example_variables(), "DJANGO_SECRET_KEY": secrets.token_urlsafe(64), "FLAMINGOCK_AUDIT_SIGNING_KEY_FILE": str(key)}
    return base_env(tmp_path, **variables)


def worker(env: dict[str, str]) -> subprocess.Popen:
    """A real worker process on a queue of its own, on the local Redis under a prefix of its own."""
    name = f"redact-{uuid.uuid4().hex[:8]}"
    env = {
        **env,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "FLAMINGOCK_BROKER_KEYPREFIX": f"{name}:",
        "FLAMINGOCK_QUEUE": name,
    }
    command = [sys.executable, "-m", "celery", "-A", "flamingock_site", "worker", "--pool=solo", "--loglevel=INFO", "--hostname", f"{name}@%h"]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """The exit code (``None``: still running, then stopped) and the output of ``process``."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        return None, output


@pytest.mark.parametrize("case", ONE_PER_REFUSAL)
def test_a_worker_refuses_to_start_in_production_mode_with_each_unsafe_setting(production_env, case):
    unsafe, error_id = UNSAFE[case]

    code, output = finished(worker(unsafe(production_env)), REFUSAL_SECONDS)

    assert code is not None, f"{case}: the worker started and ran for {REFUSAL_SECONDS} s\n{output[-3000:]}"
    assert code != 0, output[-3000:]
    assert "refusing to start a worker in production mode" in output, output[-3000:]
    assert error_id in output, output[-3000:]


def test_a_worker_with_the_documented_production_settings_is_not_refused(production_env):
    process = worker(production_env)
    started = time.monotonic()
    seen = ""
    # Celery prints "ready." once it consumes; read line by line so as not to wait for the end.
    while time.monotonic() - started < REFUSAL_SECONDS:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if " ready." in line:
            break
    code, rest = finished(process, 1)
    output = seen + rest
    assert "refusing" not in output, output[-3000:]
    assert " ready." in output, f"exit {code}\n{output[-3000:]}"


def test_beat_refuses_to_start_in_production_mode_while_a_refusal_holds(production_env, tmp_path):
    unsafe, error_id = UNSAFE[ONE_PER_REFUSAL[0]]
    command = [sys.executable, "-m", "celery", "-A", "flamingock_site", "beat", "--loglevel=INFO", "--pidfile=", "--schedule", str(tmp_path / "beat")]
    process = subprocess.Popen(command, env=unsafe(production_env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    code, output = finished(process, REFUSAL_SECONDS)

    assert code is not None, f"beat started and ran for {REFUSAL_SECONDS} s\n{output[-3000:]}"
    assert code != 0, output[-3000:]
    assert "refusing to start beat in production mode" in output, output[-3000:]
    assert error_id in output, output[-3000:]
