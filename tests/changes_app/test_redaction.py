"""Redaction that cannot miss (docs/compliance.md, "Redaction"): the secrets of every configured
target system are known to every process from its settings, whether or not it built the target;
and every free text a person types (reasons, comments) is redacted before it is stored, mailed,
logged or shown, whichever way it came in: the API, the admin or the command line.

The secrets below have no recognisable shape: only the configuration can tell them apart.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from audit_app.models import AuditEntry
from audit_app.redaction import MASK, RedactingFilter, configured_secrets, redact, secrets_forget
from audit_app.services import Actor
from changes_app.errors import ActionRefused, require_reason, typed_text
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.locks.backends import lock_backend
from changes_app.models import Approval, ChangeRequest, RequestComment, Run
from changes_app.services.notifications import mail_each
from tests.support.governance import person, policy
from tests.support.trails import cli, journal_change, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN_VAR, DSN_VAR, EXTRA_VAR = "FLAMINGOCK_TEST_REDACT_TOKEN", "FLAMINGOCK_TEST_REDACT_DSN", "FLAMINGOCK_TEST_REDACT_EXTRA"


@pytest.fixture
def leak(settings, targets, monkeypatch):
    """Two configured target systems that this process never builds: an API whose token is in one
    variable, a database whose DSN (with a password) is in another. Returns the secrets."""
    token, password = f"tk{secrets.token_hex(12)}", f"pw{secrets.token_hex(10)}"
    monkeypatch.setenv(TOKEN_VAR, token)
    monkeypatch.setenv(DSN_VAR, f"postgresql://svc:{password}@db.internal:5432/billing")
    settings.FLAMINGOCK_TARGET_SYSTEMS = {
        **targets,
        "redact-api": {"kind": "http", "base_url_env": "FLAMINGOCK_TEST_REDACT_URL", "token_env": TOKEN_VAR, "enabled": False},
        "redact-db": {"kind": "postgres", "dsn_env": DSN_VAR, "enabled": False},
    }
    return {"token": token, "password": password}


def pasted(leak) -> str:
    """A reason as a person pastes it by mistake: no ``token=`` or ``user:password@`` around the values."""
    return f"rotating after the incident, old token {leak['token']} and old db password {leak['password']} are revoked"


def assert_clean(leak, *texts) -> None:
    for text in texts:
        text = text if isinstance(text, str) else json.dumps(text, default=str)
        for name, value in leak.items():
            assert value not in text, f"the {name} reached: {text[:500]}"


def trail() -> list:
    return list(AuditEntry.objects.values_list("reason", "error", "details"))


def mails() -> list[str]:
    return [message.subject + "\n" + message.body for message in mail.outbox]


# -- the secrets settings name ------------------------------------------------------------------------


def test_the_secrets_of_configured_targets_are_known_without_building_them(leak):
    assert {leak["token"], leak["password"]} <= configured_secrets()

    text = redact(pasted(leak))

    assert_clean(leak, text)
    assert text.count(MASK) == 2 and "old token" in text and "are revoked" in text


def test_a_changed_setting_or_environment_is_read_again(leak, settings, monkeypatch):
    assert leak["token"] not in redact(leak["token"])
    other = f"other{secrets.token_hex(8)}"
    monkeypatch.setenv(EXTRA_VAR, other)
    assert redact(other) == other

    settings.FLAMINGOCK_TARGET_SYSTEMS = {"only": {"kind": "http", "token_env": EXTRA_VAR}}

    assert redact(other) == MASK
    assert redact(leak["token"]) == leak["token"]  # no longer configured
    # A process reads its environment once; a test that changes it says so.
    rotated = f"rot{secrets.token_hex(8)}"
    monkeypatch.setenv(EXTRA_VAR, rotated)
    secrets_forget()
    assert redact(rotated) == MASK


def test_secret_env_vars_literal_urls_key_value_dsns_and_django_credentials_are_known(settings, monkeypatch):
    listed, literal, keyword, encoded, database = (f"s{secrets.token_hex(8)}" for _ in range(5))
    monkeypatch.setenv(EXTRA_VAR, listed)
    monkeypatch.setenv("FLAMINGOCK_TEST_REDACT_KV", f"host=db port=5432 password={keyword} dbname=x")
    settings.FLAMINGOCK_SECRET_ENV_VARS = [EXTRA_VAR]
    settings.FLAMINGOCK_TARGET_SYSTEMS = {
        "cache": {"kind": "redis", "url": f"redis://:{literal}@cache:6379/0"},
        "kv": {"kind": "postgres", "dsn_env": "FLAMINGOCK_TEST_REDACT_KV"},
        "enc": {"kind": "http", "base_url": f"https://user:{encoded}%40x@api.example.com/?api_key={encoded}q"},
    }
    settings.EMAIL_HOST_PASSWORD = database  # Django's own credentials too (DATABASES' passwords are read the same way)

    for value in (listed, literal, keyword, f"{encoded}@x", f"{encoded}q", database):
        assert redact(f"it is {value} here") == f"it is {MASK} here", value
    # Short values and the ordinary words of a configuration are not secrets.
    assert redact("host db port 5432 dbname cache") == "host db port 5432 dbname cache"


def test_the_logging_filter_knows_the_configured_secrets(leak):
    record = logging.LogRecord("flamingock.test", logging.WARNING, __file__, 1, "refused: %s", (pasted(leak),), None)

    RedactingFilter().filter(record)

    assert_clean(leak, record.getMessage())


def test_a_reason_is_redacted_at_the_one_choke_point(leak):
    assert_clean(leak, require_reason(pasted(leak)), typed_text(f"  {leak['token']}  "))
    assert typed_text(f"  {leak['token']}  ") == MASK
    with pytest.raises(ActionRefused, match="a reason is required"):
        require_reason("   ")


def test_every_mail_is_redacted_whole(leak):
    sent = mail_each(
        f"subject with {leak['token']}", f"body: {pasted(leak)}\npassword=hunter2hunter2 and postgresql://u:opensesame@db/x", ["a@example.com"]
    )

    assert sent == 1
    assert_clean(leak, *mails())
    assert "hunter2hunter2" not in mails()[0] and "opensesame" not in mails()[0]


# -- each way a person's text comes in ---------------------------------------------------------------


@pytest.fixture
def governed(make_pipeline, unique, journal, settings, leak):
    """An applied journal change in an environment where actions on the journal need one approval;
    an engineer who operates it and an approver."""
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_n.py": journal_change(change, rollback="ok")}})
    people = {"engineer": person("engineer", ENGINEER, operate=("journal",)), "approver": person("approver", APPROVER, approve=("journal",))}
    run_pipeline(actor=people["engineer"].actor)
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("journal", "staging", 1)
    mail.outbox.clear()
    return {"change": change, **people}


def api(who) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {who.token}")
    return client


def test_a_reason_and_comments_pasted_in_the_api_never_reach_the_trail_rows_mail_or_answers(governed, leak, caplog):
    caplog.set_level(logging.DEBUG)
    created = api(governed["engineer"]).post(
        "/api/v1/requests/", {"kind": "UNDO", "change_id": governed["change"], "reason": pasted(leak)}, format="json"
    )
    assert created.status_code == 201, created.content[:500]
    request_id = created.json()["request"]["id"]
    assert mail.outbox, "the approver is told of the pending request"
    rejected = api(governed["approver"]).post(f"/api/v1/requests/{request_id}/reject/", {"comment": pasted(leak)}, format="json")
    assert rejected.status_code == 200, rejected.content[:500]

    row = ChangeRequest.objects.get(pk=request_id)
    assert MASK in row.reason and MASK in row.status_reason
    assert_clean(
        leak,
        created.content.decode(),
        rejected.content.decode(),
        row.reason,
        row.status_reason,
        list(Approval.objects.values_list("comment", flat=True)),
        trail(),
        mails(),
        caplog.text,
    )


def test_a_run_reason_pasted_in_the_api_is_redacted(governed, leak, monkeypatch):
    from flamingock_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)

    response = api(governed["engineer"]).post("/api/v1/runs/", {"reason": pasted(leak)}, format="json")

    assert response.status_code == 202, response.content[:500]
    assert_clean(leak, response.content.decode(), list(Run.objects.values_list("reason", flat=True)), trail())
    assert MASK in Run.objects.get(pk=response.json()["id"]).reason


def test_a_reason_and_a_comment_typed_in_the_admin_are_redacted(governed, leak):
    client = Client()
    client.force_login(governed["engineer"].user)

    response = client.post(
        reverse("admin:changes_app_changerecord_act", args=["UNDO", governed["change"]]), {"reason": pasted(leak), "confirm": "yes"}
    )
    assert response.status_code == 302, response.content[:500]
    request = ChangeRequest.objects.get(change_id=governed["change"])
    commented = client.post(reverse("admin:changes_app_changerequest_decide", args=[request.pk]), {"decision": "comment", "comment": pasted(leak)})
    assert commented.status_code == 302
    cancelled = client.post(reverse("admin:changes_app_changerequest_decide", args=[request.pk]), {"decision": "cancel", "comment": pasted(leak)})
    assert cancelled.status_code == 302
    page = client.get(reverse("admin:changes_app_changerequest_change", args=[request.pk]))

    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.CANCELLED and MASK in request.reason
    assert_clean(
        leak,
        request.reason,
        request.status_reason,
        list(RequestComment.objects.values_list("body", flat=True)),
        trail(),
        mails(),
        page.content.decode(),
    )


def test_a_reason_typed_on_the_command_line_and_a_lock_release_reason_are_redacted(governed, leak):
    requested = cli("undo", governed["change"], "--reason", pasted(leak), "--json")
    assert requested.code == 4, requested.out + requested.err
    lock_backend().try_acquire(run_id=uuid.uuid4(), actor=Actor(name="stale-runner"))
    released = cli("lock", "release", "--reason", pasted(leak))
    assert released.code == 0, released.out + released.err

    assert_clean(leak, requested.out, released.out, list(ChangeRequest.objects.values_list("reason", flat=True)), trail(), mails())
    assert MASK in AuditEntry.objects.get(event="lock.force_released").reason
    assert MASK in AuditEntry.objects.get(event="request.created").reason
