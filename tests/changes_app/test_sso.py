"""Signing in (docs/sso.md): the provider's groups map to roles at every SSO login, every login is
audited (``auth.login``, method ``sso`` or ``password``), failed logins are folded and throttled
(``auth.login_failed``), and local passwords can be limited to an emergency login."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.test import RequestFactory
from django.urls import reverse

from audit_app.models import AuditEntry
from changes_app.governance import refusals, sso
from changes_app.governance.roles import APPROVER, ENGINEER, PLATFORM_ADMIN, roles_ensure
from changes_app.models import SsoIdentity

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent.parent
PASSWORD = "a-long-pass-phrase-1"
ISSUER = "https://idp.example.test/openid"
BACKENDS = [
    "changes_app.governance.logins.LocalPasswordBackend",
    "changes_app.governance.sso.SsoBackend",
    "guardian.backends.ObjectPermissionBackend",
]


@pytest.fixture(autouse=True)
def fresh_counters():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def oidc(settings):
    """Single sign-on configured against a provider the test stands in for."""
    settings.FLAMINGOCK_OIDC_ENABLED = True
    settings.FLAMINGOCK_OIDC_ISSUER = ISSUER
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = "flamingock", "client-secret-value"
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{ISSUER}/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{ISSUER}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{ISSUER}/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{ISSUER}/jwks"
    settings.FLAMINGOCK_OIDC_ROLE_MAP = {"dba": APPROVER, "dev": ENGINEER, "platform": PLATFORM_ADMIN}
    settings.AUTHENTICATION_BACKENDS = BACKENDS
    roles_ensure()
    return settings


def claims(sub="s-1", username="ada", groups=("dev",), **extra):
    return {"sub": sub, "preferred_username": username, "email": f"{username}@example.com", "groups": list(groups), **extra}


def sso_login(monkeypatch, given: dict, *, payload_sub=None):
    """What the backend makes of the provider's answer ``given`` (the token exchange stood in for)."""
    backend = sso.SsoBackend()
    backend.request = RequestFactory().get("/oidc/callback/")
    monkeypatch.setattr(backend, "get_userinfo", lambda access_token, id_token, payload: given)
    return backend.get_or_create_user("access", "id", {"sub": payload_sub or given["sub"]})


def roles_of(user) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def logins(**filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(event="auth.login", **filters).order_by("id"))


def failures() -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(event="auth.login_failed").order_by("id"))


# -- role mapping ------------------------------------------------------------------------------------


def test_the_first_sso_login_creates_the_user_with_the_mapped_roles_and_no_password(oidc, monkeypatch):
    user = sso_login(monkeypatch, claims(groups=("dev", "dba", "unmapped")))

    assert (user.username, user.email, user.is_staff, user.is_superuser) == ("ada", "ada@example.com", True, False)
    assert not user.has_usable_password()
    assert roles_of(user) == {ENGINEER, APPROVER}
    assert SsoIdentity.objects.get(issuer=ISSUER, subject="s-1").user == user
    granted = AuditEntry.objects.filter(event="permission.granted", details__user="ada").order_by("id")
    assert sorted(entry.details["group"] for entry in granted) == [APPROVER, ENGINEER]
    assert {entry.actor for entry in granted} == {"service:sso"}


def test_roles_are_reapplied_at_every_login_and_a_role_removed_at_the_provider_is_removed_here(oidc, monkeypatch):
    user = sso_login(monkeypatch, claims(groups=("dev", "dba")))
    local = Group.objects.create(name="on-call")  # not a role: the provider does not manage it
    user.groups.add(local)

    again = sso_login(monkeypatch, claims(groups=("dba",)))

    assert again.pk == user.pk
    assert roles_of(again) == {APPROVER, "on-call"}
    revoked = AuditEntry.objects.get(event="permission.revoked", details__user="ada")
    assert (revoked.actor, revoked.details["group"]) == ("service:sso", ENGINEER)


def test_nobody_without_a_mapped_role_signs_in_and_a_known_user_loses_the_roles(oidc, monkeypatch):
    assert sso_login(monkeypatch, claims(sub="s-2", username="eve", groups=("unmapped",))) is None
    assert not get_user_model().objects.filter(username="eve").exists()

    user = sso_login(monkeypatch, claims(groups=("dev",)))
    assert sso_login(monkeypatch, claims(groups=())) is None

    user.refresh_from_db()
    assert roles_of(user) == set() and not user.is_staff


def test_a_user_is_found_by_subject_not_by_name_or_email(oidc, monkeypatch):
    user = sso_login(monkeypatch, claims(sub="s-1", username="ada"))

    renamed = sso_login(monkeypatch, claims(sub="s-1", username="ada.lovelace", email="new@example.com"))

    assert renamed.pk == user.pk and renamed.username == "ada" and renamed.email == "new@example.com"


def test_sso_never_takes_over_a_local_account_of_the_same_name(oidc, monkeypatch):
    local = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)

    with pytest.raises(SuspiciousOperation, match="is not linked to this SSO subject"):
        sso_login(monkeypatch, claims(sub="attacker", username="root"))

    assert not SsoIdentity.objects.exists() and roles_of(local) == set()


def test_a_deactivated_user_stays_out_whatever_the_provider_says(oidc, monkeypatch):
    user = sso_login(monkeypatch, claims())
    user.is_active = False
    user.save()

    assert sso_login(monkeypatch, claims()) is None


def test_a_userinfo_answer_about_another_subject_is_refused(oidc, monkeypatch):
    with pytest.raises(SuspiciousOperation, match="userinfo subject"):
        sso_login(monkeypatch, claims(sub="s-1"), payload_sub="s-other")


def test_a_role_map_naming_no_role_is_refused_clearly(oidc, monkeypatch):
    oidc.FLAMINGOCK_OIDC_ROLE_MAP = {"dba": "Superhero"}

    with pytest.raises(ImproperlyConfigured, match="names no role 'Superhero'"):
        sso_login(monkeypatch, claims(groups=("dba",)))


# -- the SSO login through its views, audited --------------------------------------------------------


def test_an_sso_login_through_the_callback_is_audited_with_method_sso(oidc, client, monkeypatch):
    started = client.get(reverse("oidc_authentication_init"), {"next": "/admin/"})
    assert started.status_code == 302 and started["Location"].startswith(f"{ISSUER}/authorize?")
    state = parse_qs(urlparse(started["Location"]).query)["state"][0]
    monkeypatch.setattr(sso.SsoBackend, "get_token", lambda self, payload: {"id_token": "id", "access_token": "access"})
    monkeypatch.setattr(sso.SsoBackend, "verify_token", lambda self, token, **kwargs: {"sub": "s-1"})
    monkeypatch.setattr(sso.SsoBackend, "get_userinfo", lambda self, access_token, id_token, payload: claims(groups=("dba",)))

    landed = client.get(reverse("oidc_authentication_callback"), {"code": "c", "state": state}, REMOTE_ADDR="10.0.0.7")

    assert landed.status_code == 302 and landed["Location"] == "/admin/"
    [entry] = logins()
    assert entry.actor == "ada"
    assert entry.details == {"method": "sso", "issuer": ISSUER, "roles": [APPROVER], "address": "10.0.0.7"}
    assert "client-secret-value" not in str(AuditEntry.objects.values_list("details", flat=True))


def test_an_sso_login_without_a_role_is_a_failed_login(oidc, client, monkeypatch):
    started = client.get(reverse("oidc_authentication_init"))
    state = parse_qs(urlparse(started["Location"]).query)["state"][0]
    monkeypatch.setattr(sso.SsoBackend, "get_token", lambda self, payload: {"id_token": "id", "access_token": "access"})
    monkeypatch.setattr(sso.SsoBackend, "verify_token", lambda self, token, **kwargs: {"sub": "s-9"})
    monkeypatch.setattr(sso.SsoBackend, "get_userinfo", lambda self, access_token, id_token, payload: claims(sub="s-9", groups=("x",)))

    landed = client.get(reverse("oidc_authentication_callback"), {"code": "c", "state": state})

    assert landed["Location"] == "/admin/login/?sso=failed"
    assert logins() == []
    [entry] = failures()
    assert (entry.details["method"], entry.details["why"], entry.details["reason"]) == ("sso", "no_role", "login")
    page = client.get(landed["Location"])
    assert "Single sign-on did not sign you in" in page.content.decode()


def test_the_login_page_offers_sso_only_when_it_is_configured(client, settings):
    settings.FLAMINGOCK_OIDC_ENABLED = False
    assert "Sign in with SSO" not in client.get("/admin/login/").content.decode()
    assert client.get(reverse("oidc_authentication_init")).status_code == 404
    assert client.get(reverse("oidc_authentication_callback")).status_code == 404

    settings.FLAMINGOCK_OIDC_ENABLED = True
    page = client.get("/admin/login/?next=/admin/").content.decode()
    assert "Sign in with SSO" in page and f"{reverse('oidc_authentication_init')}?next=/admin/" in page


# -- passwords -------------------------------------------------------------------------------------


def password_login(client, username, password=PASSWORD, address="10.0.0.9"):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address)


def test_a_password_login_is_audited_with_method_password(client):
    get_user_model().objects.create_user("root", password=PASSWORD, is_staff=True)

    assert password_login(client, "root").status_code == 302

    [entry] = logins()
    assert (entry.actor, entry.details) == ("root", {"method": "password", "address": "10.0.0.9"})
    assert PASSWORD not in str(AuditEntry.objects.values_list("details", "reason"))


def test_failed_logins_are_folded_per_address_and_never_record_a_typed_password(client, settings):
    settings.FLAMINGOCK_LOGIN_FAILURE_LIMIT = 100
    get_user_model().objects.create_user("root", password=PASSWORD, is_staff=True)

    for attempt in range(20):
        assert password_login(client, "root", password=f"wrong-{attempt}").status_code == 200
    password_login(client, PASSWORD, password="x")  # a password typed in the name's box

    [entry] = failures()
    assert entry.details == {
        "reason": "login",
        "action": "login",
        "object": "admin",
        "address": "10.0.0.9",
        "method": "password",
        "why": "bad_credentials",
        "user": "root",
    }
    assert refusals.refusals_counted(who="10.0.0.9", reason="login") == 21
    assert PASSWORD not in str(AuditEntry.objects.values_list("details", "reason"))
    assert password_login(client, "root", address="10.0.0.10").status_code == 302
    assert len(failures()) == 1


def test_after_the_limit_an_address_is_refused_even_the_right_password(client, settings):
    settings.FLAMINGOCK_LOGIN_FAILURE_LIMIT = 3
    get_user_model().objects.create_user("root", password=PASSWORD, is_staff=True)
    for _ in range(3):
        password_login(client, "root", password="wrong")

    refused = password_login(client, "root")

    assert refused.status_code == 200 and not refused.wsgi_request.user.is_authenticated
    assert logins() == []
    assert password_login(client, "root", address="10.0.0.99").status_code == 302


def test_local_passwords_off_refuse_everyone_before_the_password_is_checked(client, settings):
    settings.FLAMINGOCK_LOCAL_LOGIN = "off"
    get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)

    assert password_login(client, "root").status_code == 200

    assert logins() == []
    [entry] = failures()
    assert entry.details["why"] == "local_login_disabled"


def test_emergency_only_lets_the_emergency_login_in_audited_and_with_no_extra_permission(client, settings):
    settings.FLAMINGOCK_LOCAL_LOGIN = "emergency-only"
    settings.FLAMINGOCK_EMERGENCY_USERS = ["break-glass"]
    get_user_model().objects.create_user("break-glass", password=PASSWORD, is_staff=True)
    get_user_model().objects.create_user("alice", password=PASSWORD, is_staff=True)

    assert password_login(client, "alice").status_code == 200
    landed = password_login(client, "break-glass")

    assert landed.status_code == 302
    [entry] = logins()
    assert (entry.actor, entry.details) == ("break-glass", {"method": "password", "emergency": True, "address": "10.0.0.9"})
    assert client.get("/admin/").wsgi_request.user.get_all_permissions() == set()
    assert failures()[0].details["why"] == "local_login_disabled"


# -- settings ----------------------------------------------------------------------------------------


def settings_error(**environment) -> str:
    """What loading the settings says with ``environment``: the ImproperlyConfigured message."""
    env = {**os.environ, **environment}
    done = subprocess.run([sys.executable, "-c", "import flamingock_site.settings"], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0, "the settings loaded"
    return done.stderr.strip().splitlines()[-1]


def test_sso_half_configured_is_refused_at_start_up_naming_what_is_missing():
    error = settings_error(FLAMINGOCK_OIDC_CLIENT_ID="flamingock", FLAMINGOCK_OIDC_ISSUER=ISSUER)

    assert "ImproperlyConfigured" in error
    assert "FLAMINGOCK_OIDC_CLIENT_SECRET, FLAMINGOCK_OIDC_AUTHORIZATION_ENDPOINT" in error and "FLAMINGOCK_OIDC_ISSUER" not in error


def test_an_unknown_local_login_mode_is_refused_at_start_up():
    assert "FLAMINGOCK_LOCAL_LOGIN must be on, emergency-only or off, not 'emergency'" in settings_error(FLAMINGOCK_LOCAL_LOGIN="emergency")
