"""The admin's entry point for adoption (docs/django-migrations.md, "Adoption"): the target page of a
Django database with recorder rows not yet adopted offers it, with a reason, to who may operate the
target; it goes to the same service as the CLI and the API (a request where a policy governs)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from audit_app.models import AuditEntry
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRequest, DjangoAdoption, Run, TargetSystem
from tests.support.governance import person, policy, snapshot

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page(shop):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    operator = person("operator", ENGINEER, operate=("default",))
    target = TargetSystem.objects.get(name="default")
    return {
        "operator": operator,
        "viewer": person("viewer", APPROVER, approve=("default",)),
        "url": f"/admin/changes_app/targetsystem/{target.pk}/change/",
        "adopt": f"/admin/changes_app/targetsystem/{target.pk}/adopt/",
    }


def test_the_target_page_offers_adoption_and_adopts_with_a_reason(page, client):
    client.force_login(page["operator"].user)
    shown = client.get(page["url"])
    assert shown.status_code == 200
    html = shown.content.decode()
    assert 'id="flk-adopt-form"' in html and "django:djgov_shop.0001_initial" in html

    blank = client.post(page["adopt"], {"reason": "  "})
    assert blank.status_code == 302 and not DjangoAdoption.objects.exists()

    done = client.post(page["adopt"], {"reason": "adopted in the admin"})
    assert done.status_code == 302 and "/admin/changes_app/run/" in done["Location"]
    adoption = DjangoAdoption.objects.get(alias="default")
    assert adoption.reason == "adopted in the admin" and adoption.adopted_by_name == "operator"
    assert AuditEntry.objects.filter(event="change.adopted", actor="operator").count() == 1
    # Adopted: the page no longer offers it.
    assert 'id="flk-adopt-form"' not in client.get(page["url"]).content.decode()


def test_under_a_policy_the_admin_makes_a_request(page, client, settings):
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("default", "staging", 1)
    client.force_login(page["operator"].user)
    done = client.post(page["adopt"], {"reason": "needs approval"})
    request = ChangeRequest.objects.get()
    assert done.status_code == 302 and done["Location"].endswith(f"/changerequest/{request.pk}/change/")
    assert (request.kind, request.status, request.requester_name) == (ChangeRequest.Kind.ADOPT, ChangeRequest.Status.PENDING, "operator")
    assert not DjangoAdoption.objects.exists() and not Run.objects.filter(kind=Run.Kind.ADOPT).exists()


def test_who_may_not_operate_the_target_is_not_offered_and_is_refused(page, client):
    client.force_login(page["viewer"].user)
    shown = client.get(page["url"])
    assert shown.status_code == 200 and 'id="flk-adopt-form"' not in shown.content.decode()
    before = snapshot()
    refused = client.post(page["adopt"], {"reason": "not mine"})
    assert refused.status_code == 302
    assert snapshot() == before
    assert not DjangoAdoption.objects.exists()
