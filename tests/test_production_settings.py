"""Production mode (docs/operators.md, "Production checklist"): the documented production example
passes ``check --deploy`` without a warning; each unsafe setting is an error that stops ``check``,
every management command and the command line; the secure transport settings are on in production
mode and off by default.

Every test runs ``manage.py`` in a child process with a clean environment: only the variables named
here, never the test run's own ``DATABASE_URL`` or ``FLAMINGOCK_*``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "production.env.example"
#: The one key a development checkout falls back to (flamingock_site/settings.py).
BUILT_IN_KEY = "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"


def example_variables() -> dict[str, str]:
    """docs/production.env.example as it is written: ``KEY=value`` lines, comments left out."""
    variables = {}
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            variables[name.strip()] = value
    return variables


def base_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A clean environment: the interpreter's essentials, a var/ of this test's own, and ``variables``."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "SYSTEMROOT") if name in os.environ}
    env.update({"DJANGO_SETTINGS_MODULE": "flamingock_site.settings", "FLAMINGOCK_VAR_DIR": str(tmp_path / "var"), "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(variables)
    return env


@pytest.fixture
def signing_key_file(tmp_path) -> Path:
    raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    path = tmp_path / "audit-signing.key"
    path.write_bytes(base64.b64encode(raw))
    path.chmod(0o600)
    return path


@pytest.fixture
def production_env(tmp_path, signing_key_file) -> dict[str, str]:
    """Exactly the documented example, with a generated strong key and a signing key file in tmp."""
    variables = example_variables()
    assert {"DJANGO_SECRET_KEY", "FLAMINGOCK_AUDIT_SIGNING_KEY_FILE"} <= variables.keys()
    variables["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(64)
    variables["FLAMINGOCK_AUDIT_SIGNING_KEY_FILE"] = str(signing_key_file)
    return base_env(tmp_path, **variables)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def settings_of(env: dict[str, str], *names: str) -> dict:
    code = f"import json; from django.conf import settings; print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# -- the documented production example --------------------------------------------------------------


def test_the_production_example_passes_check_deploy_without_a_warning(production_env):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "WARNINGS" not in output and "ERRORS" not in output, output[-4000:]
    assert "System check identified no issues" in output


def test_the_production_example_is_production_mode_with_secure_transport(production_env):
    values = settings_of(
        production_env,
        "FLAMINGOCK_PRODUCTION",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_REDIRECT_EXEMPT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "FLAMINGOCK_DEMO",
        "INSTALLED_APPS",
    )
    assert values["FLAMINGOCK_PRODUCTION"] is True
    assert values["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert r"^health/" in values["SECURE_REDIRECT_EXEMPT"]
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    # The demo (the example app and its example pipeline) is off in production mode.
    assert values["FLAMINGOCK_DEMO"] is False
    assert "examples.apps.ExamplesConfig" not in values["INSTALLED_APPS"]


def test_without_production_mode_transport_is_plain_and_the_demo_is_off(tmp_path):
    values = settings_of(
        base_env(tmp_path),
        "FLAMINGOCK_PRODUCTION",
        "SECURE_HSTS_SECONDS",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "FLAMINGOCK_DEMO",
        "INSTALLED_APPS",
        "FLAMINGOCK_STAGES",
    )
    assert values["FLAMINGOCK_PRODUCTION"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_PROXY_SSL_HEADER"] is None
    assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False
    # The demo is never on by default, in production mode or not: only an explicit FLAMINGOCK_DEMO=1.
    assert values["FLAMINGOCK_DEMO"] is False
    assert "examples.apps.ExamplesConfig" not in values["INSTALLED_APPS"]
    assert values["FLAMINGOCK_STAGES"] == []
    result = manage("check", env=base_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_demo_runs_only_with_an_explicit_flamingock_demo_1(tmp_path):
    values = settings_of(
        base_env(tmp_path, FLAMINGOCK_DEMO="1"), "FLAMINGOCK_DEMO", "INSTALLED_APPS", "FLAMINGOCK_STAGES", "FLAMINGOCK_TARGET_SYSTEMS"
    )
    assert values["FLAMINGOCK_DEMO"] is True
    assert "examples.apps.ExamplesConfig" in values["INSTALLED_APPS"]
    assert "billing=examples.service_changes.billing" in values["FLAMINGOCK_STAGES"]
    assert "payments-api" in values["FLAMINGOCK_TARGET_SYSTEMS"]
    for off in ("0", ""):
        assert settings_of(base_env(tmp_path, FLAMINGOCK_DEMO=off), "FLAMINGOCK_DEMO")["FLAMINGOCK_DEMO"] is False


def test_flamingock_production_turns_production_mode_on_outside_a_protected_environment(tmp_path):
    env = base_env(tmp_path, FLAMINGOCK_ENVIRONMENT="staging", FLAMINGOCK_PRODUCTION="1")
    values = settings_of(env, "FLAMINGOCK_PRODUCTION", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE")
    assert values == {"FLAMINGOCK_PRODUCTION": True, "SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_SECURE": True}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "flamingock.E101" in result.stderr and "flamingock.E104" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "setting", "relaxed"),
    [
        ("FLAMINGOCK_HSTS_SECONDS", "0", "SECURE_HSTS_SECONDS", 0),
        ("FLAMINGOCK_HSTS_INCLUDE_SUBDOMAINS", "0", "SECURE_HSTS_INCLUDE_SUBDOMAINS", False),
        ("FLAMINGOCK_HSTS_PRELOAD", "0", "SECURE_HSTS_PRELOAD", False),
        ("FLAMINGOCK_SSL_REDIRECT", "0", "SECURE_SSL_REDIRECT", False),
        ("FLAMINGOCK_PROXY_SSL_HEADER", "0", "SECURE_PROXY_SSL_HEADER", None),
        ("FLAMINGOCK_SECURE_COOKIES", "0", "SESSION_COOKIE_SECURE", False),
        ("FLAMINGOCK_SECURE_COOKIES", "0", "CSRF_COOKIE_SECURE", False),
    ],
)
def test_each_variable_relaxes_one_secure_default(production_env, variable, value, setting, relaxed):
    assert settings_of({**production_env, variable: value}, setting) == {setting: relaxed}


# -- refusals: one per unsafe setting ------------------------------------------------------------------


def _without(env: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in env.items() if key != name}


UNSAFE = {
    "no secret key (the built-in default)": (lambda env: _without(env, "DJANGO_SECRET_KEY"), "flamingock.E101"),
    "an empty secret key": (lambda env: {**env, "DJANGO_SECRET_KEY": ""}, "flamingock.E101"),
    "the built-in key, set explicitly": (lambda env: {**env, "DJANGO_SECRET_KEY": BUILT_IN_KEY}, "flamingock.E101"),
    "a short secret key": (lambda env: {**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(20)}, "flamingock.E101"),
    "a secret key of few characters": (lambda env: {**env, "DJANGO_SECRET_KEY": "abab" * 20}, "flamingock.E101"),
    "a django-insecure- key": (lambda env: {**env, "DJANGO_SECRET_KEY": "django-insecure-" + secrets.token_urlsafe(50)}, "flamingock.E101"),
    "DEBUG on": (lambda env: {**env, "DJANGO_DEBUG": "1"}, "flamingock.E102"),
    "empty ALLOWED_HOSTS": (lambda env: {**env, "DJANGO_ALLOWED_HOSTS": ""}, "flamingock.E103"),
    "ALLOWED_HOSTS *": (lambda env: {**env, "DJANGO_ALLOWED_HOSTS": "flamingock.example.com,*"}, "flamingock.E103"),
    "no audit signing key": (lambda env: _without(env, "FLAMINGOCK_AUDIT_SIGNING_KEY_FILE"), "flamingock.E104"),
    "a signing key file that is not there": (
        lambda env: {**env, "FLAMINGOCK_AUDIT_SIGNING_KEY_FILE": env["FLAMINGOCK_VAR_DIR"] + "/none.key"},
        "flamingock.E104",
    ),
    "the demo on": (lambda env: {**env, "FLAMINGOCK_DEMO": "1"}, "flamingock.E105"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_check_refuses_each_unsafe_setting_in_production_mode(production_env, case):
    unsafe, error_id = UNSAFE[case]
    result = manage("check", env=unsafe(production_env))
    assert result.returncode != 0, f"{case}: check passed\n{result.stdout}{result.stderr}"
    assert error_id in result.stderr, result.stderr[-3000:]
    # Only the unsafe setting is refused: the rest of the example is sound.
    assert result.stderr.count("flamingock.E1") == 1, result.stderr[-3000:]


def test_the_same_settings_pass_outside_production_mode(tmp_path):
    """The embedded demo keeps its development key, DEBUG and the demo itself."""
    result = manage("check", env=base_env(tmp_path, DJANGO_DEBUG="1", FLAMINGOCK_DEMO="1"))
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_management_command_refuses_in_production_mode(production_env):
    result = manage("migrate", "--plan", env=_without(production_env, "DJANGO_SECRET_KEY"))
    assert result.returncode != 0
    assert "flamingock.E101" in result.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_the_command_line_refuses_in_production_mode_with_exit_2(production_env, as_json):
    env = {**_without(production_env, "DJANGO_SECRET_KEY"), "DJANGO_DEBUG": "1"}
    result = manage("flamingock", "plan", *(["--json"] if as_json else []), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout if as_json else result.stderr
    assert "flamingock.E101" in output and "flamingock.E102" in output, output
    if as_json:
        data = json.loads(result.stdout)
        assert data["exit_code"] == 2 and {problem["id"] for problem in data["problems"]} == {"flamingock.E101", "flamingock.E102"}


# -- servers that run no system checks -----------------------------------------------------------------


def gunicorn_loads(env: dict[str, str]) -> subprocess.CompletedProcess:
    """gunicorn loads the application and exits (``--check-config``), as it would before serving."""
    command = [sys.executable, "-m", "gunicorn", "--check-config", "flamingock_site.wsgi:application"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_gunicorn_refuses_to_load_the_admin_without_a_secret_key_in_production_mode(production_env):
    result = gunicorn_loads(_without(production_env, "DJANGO_SECRET_KEY"))
    assert result.returncode != 0
    assert "refusing to serve in production mode" in result.stderr and "flamingock.E101" in result.stderr, result.stderr[-3000:]


def test_gunicorn_loads_the_documented_production_example(production_env):
    result = gunicorn_loads(production_env)
    assert result.returncode == 0, result.stderr[-3000:]
