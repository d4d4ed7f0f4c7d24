"""The drift-findings endpoints: lists and details filtered by the target systems one may see (an
invisible finding is a 404 like a missing one); acknowledge and resolve go through the drift
services, need a reason and the acknowledge permission, and are audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from audit_app.models import AuditEntry
from changes_app.models import Finding
from tests.changes_app.api.conftest import client_for
from tests.changes_app.api.helpers import refused, state
from tests.support.governance import person

pytestmark = pytest.mark.django_db(transaction=True)


def finding(unique: str, target: str, kind: str = Finding.Kind.CHECKSUM_MISMATCH) -> Finding:
    return Finding.objects.create(
        fingerprint=f"{unique}-{target}-{kind}"[:64],
        check_name=Finding.Check.DEFINITION,
        kind=kind,
        environment="staging",
        change_id=f"chg-{target}-{unique}",
        target=target,
        summary=f"{target} drifted",
    )


def with_permissions(who, *codenames: str):
    who.user.user_permissions.add(*Permission.objects.filter(content_type__app_label="changes_app", codename__in=codenames))
    return client_for(who)


@pytest.fixture
def found(unique, people):
    return {"db": finding(unique, "app-db"), "note": finding(unique, "journal", Finding.Kind.VERIFY_FAILED)}


@pytest.fixture
def watcher(people):
    """A person with the global view and acknowledge permissions on findings, and no role."""
    return with_permissions(person("watcher"), "view_finding", "acknowledge_finding")


def test_list_shows_all_findings_with_the_global_permission_and_only_visible_targets_otherwise(found, clients, watcher):
    db, note = found["db"], found["note"]
    assert {f["id"] for f in watcher.get("/api/v1/findings/").json()["results"]} == {db.pk, note.pk}
    assert [f["id"] for f in clients["scoped"].get("/api/v1/findings/").json()["results"]] == [note.pk]
    assert [f["id"] for f in watcher.get("/api/v1/findings/?kind=VERIFY_FAILED").json()["results"]] == [note.pk]
    Finding.objects.filter(pk=db.pk).update(status=Finding.Status.RESOLVED)
    assert [f["id"] for f in watcher.get("/api/v1/findings/?status=OPEN").json()["results"]] == [note.pk]
    refused(watcher.get("/api/v1/findings/?status=NOPE"), 400, "invalid")
    refused(clients["anonymous"].get("/api/v1/findings/"), 401, "not_authenticated")


def test_detail_of_an_invisible_finding_reads_exactly_like_a_missing_one(found, clients, watcher):
    db, note = found["db"], found["note"]
    scoped = clients["scoped"]
    assert watcher.get(f"/api/v1/findings/{db.pk}/").json()["target"] == "app-db"
    assert scoped.get(f"/api/v1/findings/{note.pk}/").json()["kind"] == "VERIFY_FAILED"
    hidden, missing = scoped.get(f"/api/v1/findings/{db.pk}/"), scoped.get("/api/v1/findings/999999/")
    assert refused(hidden, 404, "not_found") == refused(missing, 404, "not_found")
    assert hidden.json() == missing.json()
    before = state()
    hidden = scoped.post(f"/api/v1/findings/{db.pk}/acknowledge/", {"reason": "peek"}, format="json")
    missing = scoped.post("/api/v1/findings/999999/acknowledge/", {"reason": "peek"}, format="json")
    assert refused(hidden, 404, "not_found") == refused(missing, 404, "not_found")
    assert state() == before


def test_acknowledge_and_resolve_are_done_by_the_service_and_audited(found, watcher):
    db = found["db"]
    response = watcher.post(f"/api/v1/findings/{db.pk}/acknowledge/", {"reason": "looking at it"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "ACKNOWLEDGED" and response.json()["status_reason"] == "looking at it"
    response = watcher.post(f"/api/v1/findings/{db.pk}/resolve/", {"reason": "re-applied by hand"}, format="json")
    assert response.status_code == 200, response.json()
    db.refresh_from_db()
    assert (db.status, db.status_by, db.status_reason) == (Finding.Status.RESOLVED, "watcher", "re-applied by hand")
    entries = AuditEntry.objects.filter(event__in=["drift.acknowledged", "drift.resolved"]).order_by("id")
    assert [(e.event, e.actor, e.reason, e.target, e.details["finding"]) for e in entries] == [
        ("drift.acknowledged", "watcher", "looking at it", "app-db", db.pk),
        ("drift.resolved", "watcher", "re-applied by hand", "app-db", db.pk),
    ]
    before = state()
    refused(watcher.post(f"/api/v1/findings/{db.pk}/resolve/", {"reason": "again"}, format="json"), 409, "action_refused")
    assert state() == before


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_blank_reason_is_refused_and_changes_nothing(found, watcher, action):
    db = found["db"]
    before = state()
    for body in ({"reason": "   "}, {"reason": ""}, {}):
        details = refused(watcher.post(f"/api/v1/findings/{db.pk}/{action}/", body, format="json"), 400, "invalid")
        assert "reason" in details
    assert state() == before
    db.refresh_from_db()
    assert db.status == Finding.Status.OPEN and db.status_reason == ""


def test_a_visible_finding_without_the_acknowledge_permission_is_a_403_and_changes_nothing(found, clients):
    note = found["note"]
    before = state()
    refused(clients["scoped"].post(f"/api/v1/findings/{note.pk}/acknowledge/", {"reason": "mine"}, format="json"), 403, "permission_denied")
    refused(clients["scoped"].post(f"/api/v1/findings/{note.pk}/resolve/", {"reason": "mine"}, format="json"), 403, "permission_denied")
    assert state() == before
    note.refresh_from_db()
    assert note.status == Finding.Status.OPEN
