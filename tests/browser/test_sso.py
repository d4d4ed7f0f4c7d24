"""Single sign-on end to end (docs/sso.md), in Chromium against a real OpenID Connect provider: a
second Django process running django-oidc-provider (tests/support/oidc_provider/) on its own
SQLite file. A person of its ``dba-team`` group clicks "Sign in with SSO", signs in at the provider,
consents, and lands in the admin as an Approver; the ``auth.login`` entry says ``sso``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from audit_app.models import AuditEntry
from changes_app.governance.roles import APPROVER, roles_ensure

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
PASSWORD = "provider-pass-1"
CLIENT_ID, CLIENT_SECRET = "flamingock-sso-journey", "sso-journey-client-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def provider(tmp_path, live_server):
    """The provider's process on 127.0.0.1 (the product is on localhost: cookies are per host),
    provisioned with the product's client, whose redirect is the live server's callback."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.support.oidc_provider.settings",
        "OIDC_TEST_PROVIDER_DB": str(tmp_path / "provider.sqlite3"),
        "OIDC_TEST_PASSWORD": PASSWORD,
        "PYTHONPATH": str(REPO),
    }
    callback = f"{live_server.url}/oidc/callback/"
    subprocess.run([sys.executable, "-m", "tests.support.oidc_provider.provision", callback, CLIENT_ID, CLIENT_SECRET], env=env, cwd=REPO, check=True)
    log = (tmp_path / "provider.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/openid"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/.well-known/openid-configuration", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "provider.log").read_text()
                assert time.monotonic() < deadline, "the provider did not answer within 20 s"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def sso_configured(settings, provider):
    """The product configured for the provider, as FLAMINGOCK_OIDC_* would configure it."""
    settings.FLAMINGOCK_OIDC_ENABLED = True
    settings.FLAMINGOCK_OIDC_ISSUER = provider
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{provider}/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{provider}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{provider}/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{provider}/jwks"
    settings.FLAMINGOCK_OIDC_ROLE_MAP = {"dba-team": APPROVER}
    settings.AUTHENTICATION_BACKENDS = [
        "changes_app.governance.logins.LocalPasswordBackend",
        "changes_app.governance.sso.SsoBackend",
        "guardian.backends.ObjectPermissionBackend",
    ]
    roles_ensure()
    connections.close_all()
    return settings


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (bin/test does it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


def test_a_person_signs_in_with_sso_lands_with_the_mapped_role_and_the_login_is_audited(live_server, sso_configured, browser):
    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")

    page.get_by_role("link", name="Sign in with SSO").click()
    page.wait_for_url("http://127.0.0.1:*/accounts/login/**")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in at the provider").click()
    page.get_by_role("button", name="Authorize").click()  # the provider's consent
    page.wait_for_url(f"{live_server.url}/admin/")

    assert "welcome, ada" in page.locator("#user-tools").inner_text().lower()
    page.close()
    connections.close_all()
    ada = get_user_model().objects.get(username="ada")
    assert set(ada.groups.values_list("name", flat=True)) == {APPROVER}  # coffee-club maps to nothing
    assert ada.is_staff and not ada.is_superuser and not ada.has_usable_password()
    [entry] = AuditEntry.objects.filter(event="auth.login")
    assert (entry.actor, entry.details["method"], entry.details["roles"]) == ("ada", "sso", [APPROVER])
    assert CLIENT_SECRET not in str(list(AuditEntry.objects.values_list("details", "reason")))
