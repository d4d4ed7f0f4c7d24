"""Adoption as a governed request (issue 21; docs/django-migrations.md, "Adoption"): where an approval
policy governs the database's target, ``adopt django`` makes an ADOPT request on ``django:<alias>``
bound to the recorder rows seen then; a second person approves it and its run adopts exactly those."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.errors import ActionRefused, RequestRefused, RequestStale
from changes_app.governance.permissions import PermissionRefused, SelfDecisionRefused
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRequest, DjangoAdoption, Run
from changes_app.pipeline.django_migrations import adoption_required
from changes_app.pipeline.rules import adoption_digest
from changes_app.services.runs import run_create
from tests.changes_app.api.conftest import client_for
from tests.support.governance import person, policy, snapshot
from tests.support.trails import cli

pytestmark = pytest.mark.django_db(transaction=True)

SHOP_0001, SHOP_0002 = "django:djgov_shop.0001_initial", "django:djgov_shop.0002_seed"
URL = "/api/v1/django/adoptions/default/"


@pytest.fixture
def governed(shop, settings):
    """``djgov_shop`` migrated to 0001 by plain ``migrate``, in staging where one approval governs ``default``."""
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("default", "staging", 1)
    return {
        "requester": person("requester", ENGINEER, operate=("default",)),
        "approver": person("approver", APPROVER, approve=("default",)),
        "both": person("both", ENGINEER, APPROVER, operate=("default",), approve=("default",)),
        "outsider": person("outsider", ENGINEER, APPROVER, operate=("journal",), approve=("journal",)),
    }


def _request(who, reason="taken over from plain migrate") -> ChangeRequest:
    submission = services.django_adopt(alias="default", actor=who.actor, reason=reason, source=Run.Source.UI)
    assert submission.run is None and submission.awaiting_approval
    return submission.request


def test_request_then_a_second_person_approves_and_the_run_adopts(governed):
    request = _request(governed["requester"])
    assert (request.kind, request.change_id, request.target_system.name) == (ChangeRequest.Kind.ADOPT, "django:default", "default")
    assert request.checksum == adoption_digest("default") and request.required_approvals == 1
    assert request.rendered["adoption"]["migrations"] == [
        {"change_id": SHOP_0001, "checksum": request.rendered["adoption"]["migrations"][0]["checksum"]}
    ]
    assert AuditEntry.objects.filter(event="request.created", change_id="django:default").exists()
    # Nothing adopted yet: the alias still blocks.
    assert not DjangoAdoption.objects.exists() and adoption_required("default")

    approved = services.request_approve(request_id=request.pk, actor=governed["approver"].actor, inline=True)
    assert approved.status == ChangeRequest.Status.EXECUTED, approved.status_reason
    assert approved.run.kind == Run.Kind.ADOPT and approved.run.status == Run.Status.SUCCEEDED
    entries = list(AuditEntry.objects.filter(event="change.adopted"))
    assert [(e.change_id, e.state, e.actor, e.reason) for e in entries] == [
        (SHOP_0001, S.MANUAL_MARKED_AS_APPLIED, "requester", "taken over from plain migrate")
    ]
    adoption = DjangoAdoption.objects.get(alias="default")
    assert adoption.request_id == request.pk and adoption.adopted_by_name == "requester"
    assert not adoption_required("default")
    assert approved.run.parameters["approval"]  # the evidence of who approved travels with the run


def test_a_recorder_row_that_appears_after_the_request_makes_it_stale(governed):
    request = _request(governed["requester"])
    call_command("migrate", "djgov_shop", "0002", verbosity=0)  # plain migrate again, behind governance's back
    with pytest.raises(RequestStale, match="recorder rows of django:default changed"):
        services.request_approve(request_id=request.pk, actor=governed["approver"].actor, inline=True)
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.PENDING and not request.approvals.exists()
    assert not DjangoAdoption.objects.exists() and not AuditEntry.objects.filter(event="change.adopted").exists()
    # A new request covers the new set; the stale one is superseded.
    again = _request(governed["requester"], reason="now with the seed")
    assert again.pk != request.pk and len(again.rendered["adoption"]["migrations"]) == 2
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.EXPIRED


def test_a_recorder_row_that_appears_between_approval_and_run_fails_the_run_under_the_lock(governed):
    request = _request(governed["requester"])
    # As request_execute leaves it for a worker: approved, its ADOPT run created and not yet run.
    ChangeRequest.objects.filter(pk=request.pk).update(status=ChangeRequest.Status.APPROVED, decided_at=timezone.now())
    run = run_create(
        actor=governed["requester"].actor,
        source=Run.Source.UI,
        kind=Run.Kind.ADOPT,
        change_id="django:default",
        reason="r",
        parameters={"request_id": request.pk},
    )
    ChangeRequest.objects.filter(pk=request.pk).update(run=run)
    call_command("migrate", "djgov_shop", "0002", verbosity=0)  # before the run takes the lock
    run = services.run_execute(run_id=run.id)
    assert run.status == Run.Status.FAILED and "stale" in run.status_reason
    assert not DjangoAdoption.objects.exists() and not AuditEntry.objects.filter(event="change.adopted").exists()
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.FAILED


def test_the_requester_cannot_approve_their_own_adoption(governed):
    request = _request(governed["both"])
    before = snapshot()
    with pytest.raises(SelfDecisionRefused):
        services.request_approve(request_id=request.pk, actor=governed["both"].actor, inline=True)
    assert snapshot() == before
    assert not DjangoAdoption.objects.exists()


def test_no_permission_to_request_or_to_approve(governed):
    before = snapshot()
    with pytest.raises(PermissionRefused):
        services.django_adopt(alias="default", actor=governed["outsider"].actor, reason="not mine", source=Run.Source.UI)
    assert snapshot() == before
    request = _request(governed["requester"])
    with pytest.raises(PermissionRefused):
        services.request_approve(request_id=request.pk, actor=governed["outsider"].actor, inline=True)
    request.refresh_from_db()
    assert request.status == ChangeRequest.Status.PENDING and not DjangoAdoption.objects.exists()


def test_bad_requests_are_refused_and_write_nothing(governed):
    before = snapshot()
    with pytest.raises(ActionRefused):
        services.django_adopt(alias="default", actor=governed["requester"].actor, reason="   ", source=Run.Source.UI)
    with pytest.raises(ActionRefused, match="no governed Django migrations"):
        services.django_adopt(alias="nope", actor=governed["requester"].actor, reason="x", source=Run.Source.UI)
    assert snapshot() == before
    _request(governed["requester"])
    with pytest.raises(RequestRefused, match="already pending"):
        _request(governed["requester"], reason="twice")
    # A request for ADOPT made through the generic endpoint with a change's id is refused.
    with pytest.raises(ActionRefused):
        services.request_create(kind=ChangeRequest.Kind.ADOPT, change_id=SHOP_0001, actor=governed["requester"].actor, reason="x")


def test_an_adoption_adopted_meanwhile_is_refused_at_execution(governed, settings):
    request = _request(governed["requester"])
    # The policy row goes away and someone adopts directly; the request can no longer run.
    settings.FLAMINGOCK_ENVIRONMENT = "dev"
    services.django_adopt(alias="default", actor=governed["requester"].actor, reason="direct", source=Run.Source.UI)
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    with pytest.raises(RequestRefused, match="already adopted"):
        services.request_approve(request_id=request.pk, actor=governed["approver"].actor, inline=True)
    assert DjangoAdoption.objects.get().reason == "direct"


def test_cli_and_api_make_the_request_and_the_admin_page_lists_the_migrations(governed, client, monkeypatch):
    monkeypatch.setenv("FLAMINGOCK_TOKEN", governed["requester"].token)
    made = cli("adopt", "django", "--reason", "from the CLI", "--json")
    assert made.code == 4, made.out + made.err
    shown = json.loads(made.out)
    assert shown["awaiting_approval"] is True and shown["kind"] == ChangeRequest.Kind.ADOPT
    request = ChangeRequest.objects.get(pk=shown["id"])
    services.request_cancel(request_id=request.pk, actor=governed["requester"].actor)

    api = client_for(governed["requester"]).post(URL, {"reason": "over the API"}, format="json")
    assert api.status_code == 202, api.content
    body = api.json()
    assert body["awaiting_approval"] is True and body["run"] is None and body["request"]["change_id"] == "django:default"
    detail = client_for(governed["approver"]).get(f"/api/v1/requests/{body['request']['id']}/")
    assert detail.status_code == 200, detail.content
    assert [m["change_id"] for m in detail.json()["rendered"]["adoption"]["migrations"]] == [SHOP_0001]
    assert detail.json()["may_decide"] is True

    client.force_login(governed["approver"].user)
    page = client.get(f"/admin/changes_app/changerequest/{body['request']['id']}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="flk-adoption"' in html and SHOP_0001 in html
