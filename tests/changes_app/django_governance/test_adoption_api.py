"""``/api/v1/django/adoptions/<alias>/``: the same adoption as ``flamingock adopt django``, checked
against the alias's target system; a refusal changes nothing."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from audit_app.models import AuditEntry
from changes_app.governance.roles import ENGINEER
from changes_app.models import DjangoAdoption, Run
from tests.changes_app.api.conftest import client_for
from tests.changes_app.api.helpers import refused
from tests.support.governance import person

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/django/adoptions/default/"


@pytest.fixture
def engineers(shop):
    return {"operator": person("operator", ENGINEER, operate=("default",)), "outsider": person("outsider", ENGINEER, operate=("journal",))}


def test_status_then_adoption_through_the_api(shop, engineers):
    call_command("migrate", "djgov_shop", "0002", verbosity=0)
    client = client_for(engineers["operator"])
    status = client.get(URL)
    assert status.status_code == 200, status.content
    assert status.json()["adoption_required"] is True
    assert [row["change_id"] for row in status.json()["migrations"]] == ["django:djgov_shop.0001_initial", "django:djgov_shop.0002_seed"]

    done = client.post(URL, {"reason": "adopted over the API"}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["kind"] == Run.Kind.ADOPT and done.json()["status"] == Run.Status.SUCCEEDED
    adoption = DjangoAdoption.objects.get(alias="default")
    assert adoption.adopted_by_id == engineers["operator"].user.pk and adoption.adopted_by_name == "operator"
    assert AuditEntry.objects.filter(event="change.adopted", actor="operator").count() == 2

    after = client.get(URL).json()
    assert after["adopted"] is True and after["adoption_required"] is False and after["adopted_by"] == "operator"

    again = client.post(URL, {"reason": "twice"}, format="json")
    refused(again, 409, "action_refused")


def test_a_person_who_may_not_operate_the_target_is_refused_and_nothing_changes(shop, engineers):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    client = client_for(engineers["outsider"])
    refused(client.get(URL), 403, "permission_denied")
    refused(client.post(URL, {"reason": "not mine"}, format="json"), 403, "permission_denied")
    refused(client_for().post(URL, {"reason": "anonymous"}, format="json"), 401, "not_authenticated")
    refused(client_for(engineers["operator"]).post(URL, {}, format="json"), 400, "invalid")
    assert not DjangoAdoption.objects.exists()
    assert not AuditEntry.objects.filter(event="change.adopted").exists()


def test_plan_renders_sql_only_when_asked_and_only_for_visible_targets(shop, engineers):
    plain = client_for(engineers["operator"]).get("/api/v1/plan/")
    assert plain.status_code == 200 and "rendered" not in plain.json()
    with_sql = client_for(engineers["operator"]).get("/api/v1/plan/?sql=1")
    assert with_sql.status_code == 200
    assert [m["change_id"] for m in with_sql.json()["rendered"]] == [
        "django:djgov_shop.0001_initial",
        "django:djgov_shop.0002_seed",
        "django:djgov_shop.0003_product_sku",
    ]
    # Someone who cannot see the database's target (no role, object permissions on the journal only) sees none of its migrations.
    scoped = person("scoped", operate=("journal",))
    hidden = client_for(scoped).get("/api/v1/plan/?sql=1")
    assert hidden.status_code == 200 and hidden.json()["rendered"] == []
