"""Break-glass through its surfaces (docs/break-glass.md): the command line's ``--break-glass
--incident REF --reason TEXT`` and the API's ``break_glass`` object perform the same service; the
refusals and the missing incident change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.models import ChangeRequest, Run
from tests.changes_app.test_break_glass import applied_table, people  # noqa: F401  (a fixture)
from tests.support.governance import policy, snapshot
from tests.support.trails import cli, run_pipeline, sql_change, table_exists

pytestmark = pytest.mark.django_db(transaction=True)

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status
REQUESTS = "/api/v1/requests/"


@pytest.fixture
def staging(settings):
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    return "staging"


def client_for(who) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {who.token}")
    return client


def test_the_command_line_undoes_with_break_glass_and_prints_the_run(make_pipeline, unique, people, staging, monkeypatch):  # noqa: F811
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["oncall"].token)

    done = cli("undo", change, "--break-glass", "--incident", "INC-9", "--reason", "writes time out", "--json")

    assert done.code == 0, done.err
    assert not table_exists(table)
    used = AuditEntry.objects.get(event="break_glass.used")
    assert (used.details["incident"], used.details["reason"], used.details["action"]) == ("INC-9", "writes time out", "UNDO")
    assert ChangeRequest.objects.get(kind=Kind.REVIEW).source == Run.Source.CLI


def test_the_command_line_refuses_break_glass_without_an_incident_and_an_incident_without_break_glass(
    make_pipeline,
    unique,
    people,  # noqa: F811
    staging,
    monkeypatch,
):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["oncall"].token)
    before = snapshot()

    missing = cli("undo", change, "--break-glass", "--reason", "writes time out")
    stray = cli("undo", change, "--incident", "INC-9", "--reason", "writes time out")

    assert missing.code != 0 and "incident reference" in missing.err
    assert stray.code == 2 and "--incident goes with --break-glass" in stray.err
    assert snapshot() == before and table_exists(table)


def test_the_command_line_refuses_a_person_without_the_permission(make_pipeline, unique, people, staging, monkeypatch):  # noqa: F811
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["eng"].token)
    before = snapshot()

    refused = cli("undo", change, "--break-glass", "--incident", "INC-9", "--reason", "writes time out")

    assert refused.code != 0 and "may not use break-glass" in refused.err
    assert snapshot() == before and table_exists(table)


def test_the_api_accepts_a_break_glass_object_on_the_action_endpoint(make_pipeline, unique, people, staging):  # noqa: F811
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)

    response = client_for(people["oncall"]).post(
        REQUESTS, {"kind": "UNDO", "change_id": change, "break_glass": {"reason": "writes time out", "incident": "INC-9"}}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["request"]["break_glass"] is True and body["request"]["incident"] == "INC-9"
    assert body["request"]["status"] == Status.APPROVED and body["run"] is not None  # a worker runs it
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)
    shown = client_for(people["alice"]).get(f"{REQUESTS}{review.pk}/").json()
    assert (shown["kind"], shown["reviewed_request_id"], shown["required_approvals"], shown["overdue"]) == ("REVIEW", body["request"]["id"], 2, False)


@pytest.mark.parametrize(
    ("emergency", "status", "code"),
    [
        ({"reason": "writes time out"}, 400, "invalid"),
        ({"reason": "writes time out", "incident": "<b>"}, 409, "action_refused"),
        ({"reason": "", "incident": "INC-9"}, 400, "invalid"),
    ],
)
def test_the_api_refuses_a_break_glass_object_without_a_reason_or_incident(make_pipeline, unique, people, staging, emergency, status, code):  # noqa: F811
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    client = client_for(people["oncall"])
    before = snapshot()

    response = client.post(REQUESTS, {"kind": "UNDO", "change_id": change, "break_glass": emergency}, format="json")

    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert snapshot() == before


def test_the_api_refuses_break_glass_to_a_person_without_the_permission(make_pipeline, unique, people, staging):  # noqa: F811
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    client = client_for(people["eng"])
    before = snapshot()

    response = client.post(
        REQUESTS, {"kind": "UNDO", "change_id": change, "break_glass": {"reason": "writes time out", "incident": "INC-9"}}, format="json"
    )

    assert (response.status_code, response.json()["error"]["code"]) == (403, "permission_denied")
    assert snapshot() == before


# -- the admin -------------------------------------------------------------------------------------------


def act_url(kind: str, change: str) -> str:
    return reverse("admin:changes_app_changerecord_act", args=[kind, change])


def test_the_admin_offers_the_emergency_form_to_holders_only_and_refuses_a_forged_post(
    make_pipeline,
    unique,
    people,  # noqa: F811
    staging,
    client,
):
    change, table = applied_table(make_pipeline, unique, people)
    services.catalogue_sync()
    policy("app-db", "staging", 1)

    client.force_login(people["eng"].user)
    page = client.get(act_url("UNDO", change))
    assert page.status_code == 200 and b"flk-emergency" not in page.content
    before = snapshot()
    forged = client.post(
        act_url("UNDO", change), {"emergency": "yes", "emergency_incident": "INC-9", "emergency_reason": "writes time out"}, follow=True
    )
    assert "may not use break-glass" in forged.content.decode()
    assert snapshot() == before and table_exists(table)

    client.force_login(people["oncall"].user)
    page = client.get(act_url("UNDO", change))
    assert b"Emergency (break-glass)" in page.content and b"A reason is required" not in page.content
    missing = client.post(act_url("UNDO", change), {"emergency": "yes", "emergency_incident": "", "emergency_reason": "x"}, follow=True)
    assert "needs an incident reference" in missing.content.decode()
    assert snapshot() == before


def test_the_dashboard_lists_open_and_overdue_reviews_to_those_who_see_them(make_pipeline, unique, people, staging, client):  # noqa: F811
    change, _ = applied_table(make_pipeline, unique, people)
    services.catalogue_sync()
    policy("app-db", "staging", 1)
    services.request_submit(
        kind=Kind.UNDO,
        change_id=change,
        actor=people["oncall"].actor,
        reason="",
        source=Run.Source.UI,
        break_glass=services.break_glass_of(reason="writes time out", incident="INC-9"),
    )
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)

    client.force_login(people["alice"].user)
    page = client.get(reverse("admin:index")).content.decode()
    assert "Break-glass reviews: 0 overdue, 1 open" in page and f"#{review.pk} {change}" in page

    ChangeRequest.objects.filter(pk=review.pk).update(due_at=timezone.now() - timedelta(minutes=1))
    services.reviews_overdue()
    page = client.get(reverse("admin:index")).content.decode()
    assert "Break-glass reviews: 1 overdue, 0 open" in page and "OVERDUE" in page
    detail = client.get(reverse("admin:changes_app_changerequest_change", args=[review.pk])).content.decode()
    assert "OVERDUE" in detail and "INC-9" in detail


def test_reviewers_approve_a_review_from_the_command_line_and_its_user_is_refused(make_pipeline, unique, people, staging, monkeypatch):  # noqa: F811
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["oncall"].token)
    assert cli("undo", change, "--break-glass", "--incident", "INC-9", "--reason", "writes time out").code == 0
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)

    own = cli("approve", str(review.pk))
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["alice"].token)
    first = cli("approve", str(review.pk), "--comment", "justified")
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["bob"].token)
    second = cli("approve", str(review.pk), "--json")

    assert own.code != 0 and "nobody decides their own request" in own.err
    assert first.code == 0 and "approval recorded (1 of 2)" in first.out
    assert second.code == 0 and second.json()["status"] == "APPROVED" and second.json()["kind"] == "REVIEW"


def test_the_admin_request_apply_page_approves_an_emergency_apply_for_the_next_run(make_pipeline, unique, people, staging, client):  # noqa: F811
    policy("app-db", "staging", 1)
    change, table = f"bg-{unique}", f"bg_{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}")}})
    services.catalogue_sync()
    client.force_login(people["oncall"].user)

    done = client.post(act_url("APPLY", change), {"emergency": "yes", "emergency_incident": "INC-9", "emergency_reason": "hotfix index"})

    request = ChangeRequest.objects.get(kind=Kind.APPLY)
    assert done.status_code == 302 and done["Location"].endswith(f"/changerequest/{request.pk}/change/")
    assert (request.status, request.break_glass, request.source) == (Status.APPROVED, True, Run.Source.UI)
    assert "run_id" not in AuditEntry.objects.get(event="break_glass.used").details
    assert run_pipeline(actor=people["oncall"].actor).status == Run.Status.SUCCEEDED and table_exists(table)
