"""The permission matrix (docs/semantics.md §9): every endpoint and method against every role and an
object-scoped person; lists filtered; an object one may not see is a 404 exactly like a missing one."""

from __future__ import annotations

import uuid

import pytest

from changes_app.models import ChangeRequest, Run
from tests.support.governance import snapshot

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ("anonymous", "compliance", "engineer", "approver", "admin", "scoped")


def _pending_request(clients, change_id: str) -> int:
    response = clients["engineer"].post("/api/v1/requests/", {"kind": "UNDO", "change_id": change_id, "reason": "matrix"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["awaiting_approval"] is True
    return response.json()["request"]["id"]


def test_every_read_endpoint_answers_each_role_as_domain_says(world, clients):
    db, note = world["db"], world["note"]
    run = Run.objects.first()
    request_id = _pending_request(clients, db)
    everyone = {"anonymous": 401, "compliance": 200, "engineer": 200, "approver": 200, "admin": 200, "scoped": 200}
    app_db_only = everyone | {"scoped": 404}
    matrix = {
        "/api/v1/targets/": everyone,
        "/api/v1/targets/app-db/": app_db_only,
        "/api/v1/targets/journal/": everyone,
        "/api/v1/changes/": everyone,
        f"/api/v1/changes/{db}/": app_db_only,
        f"/api/v1/changes/{note}/": everyone,
        "/api/v1/plan/": everyone,
        "/api/v1/issues/": everyone,
        "/api/v1/runs/": everyone,
        # The pipeline run was started by the engineer: the scoped person sees own runs and those of its changes only.
        f"/api/v1/runs/{run.pk}/": everyone | {"scoped": 404},
        "/api/v1/requests/": everyone,
        f"/api/v1/requests/{request_id}/": app_db_only,
        "/api/v1/audit/entries/": everyone,
        "/api/v1/audit/export/": everyone,
        "/api/v1/lock/": everyone,
    }
    for url, expected in matrix.items():
        for role in ROLES:
            response = clients[role].get(url)
            assert response.status_code == expected[role], (url, role, response.status_code)
            if response.status_code >= 400:
                assert response.json()["error"]["code"] in ("not_authenticated", "not_found")


def test_lists_are_filtered_to_the_target_systems_one_may_see(world, clients):
    db, note = world["db"], world["note"]
    _pending_request(clients, db)
    scoped, engineer = clients["scoped"], clients["compliance"]
    assert [t["name"] for t in scoped.get("/api/v1/targets/").json()["results"]] == ["journal"]
    assert {t["name"] for t in engineer.get("/api/v1/targets/").json()["results"]} >= {"app-db", "journal"}
    assert [c["id"] for c in scoped.get("/api/v1/changes/").json()] == [note]
    assert {c["id"] for c in engineer.get("/api/v1/changes/").json()} == {db, note}
    assert [i["name"] for i in scoped.get("/api/v1/plan/").json()["stages"]] == ["side"]
    assert scoped.get("/api/v1/requests/").json()["results"] == []
    assert len(engineer.get("/api/v1/requests/").json()["results"]) == 1
    assert scoped.get("/api/v1/runs/").json()["results"] == []
    targets = {e["target"] for e in scoped.get("/api/v1/audit/entries/").json()["results"]}
    assert targets == {"journal"}
    everything = {e["target"] for e in engineer.get("/api/v1/audit/entries/?page_size=500").json()["results"]}
    assert {"app-db", "journal"} <= everything


def test_an_invisible_object_reads_exactly_like_a_missing_one(world, clients):
    db = world["db"]
    request_id = _pending_request(clients, db)
    scoped = clients["scoped"]
    pairs = [
        (f"/api/v1/changes/{db}/", "/api/v1/changes/no-such-change/"),
        (f"/api/v1/requests/{request_id}/", "/api/v1/requests/999999/"),
        ("/api/v1/targets/app-db/", "/api/v1/targets/no-such-target/"),
        (f"/api/v1/runs/{Run.objects.first().pk}/", f"/api/v1/runs/{uuid.uuid4()}/"),
    ]
    for hidden, missing in pairs:
        a, b = scoped.get(hidden), scoped.get(missing)
        assert (
            (a.status_code, a.json()) == (b.status_code, b.json()) == (404, {"error": {"code": "not_found", "message": "Not found.", "details": {}}})
        )
    for action in ("approve", "reject", "cancel"):
        a = scoped.post(f"/api/v1/requests/{request_id}/{action}/", {}, format="json")
        b = scoped.post(f"/api/v1/requests/999999/{action}/", {}, format="json")
        assert (a.status_code, a.json()) == (b.status_code, b.json())
    a = scoped.post("/api/v1/requests/", {"kind": "UNDO", "change_id": db, "reason": "x"}, format="json")
    b = scoped.post("/api/v1/requests/", {"kind": "UNDO", "change_id": "no-such-change", "reason": "x"}, format="json")
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert a.status_code == 400 and a.json()["error"]["details"] == {"change_id": ["Unknown change."]}


def test_acting_endpoints_allow_only_the_roles_domain_names(world, clients):
    db, note = world["db"], world["note"]
    # Creating a request: those who operate the change's target system.
    create = {"anonymous": 401, "compliance": 403, "engineer": 201, "approver": 403, "admin": 403, "scoped": 201}
    for role, expected in create.items():
        before = snapshot()
        response = clients[role].post("/api/v1/requests/", {"kind": "UNDO", "change_id": note, "reason": "matrix"}, format="json")
        assert response.status_code == expected, (role, response.json())
        if expected == 201:
            # Its requester (and only its requester) may cancel it, which frees the slot for the next role.
            for other in ("approver", "compliance"):
                refused = clients[other].post(f"/api/v1/requests/{response.json()['request']['id']}/cancel/", {}, format="json")
                assert refused.status_code == 403
            assert clients[role].post(f"/api/v1/requests/{response.json()['request']['id']}/cancel/", {}, format="json").status_code == 200
        else:
            assert snapshot() == before
    # Deciding a request: those who approve its target system, never its requester.
    request_id = _pending_request(clients, db)
    decide = {"anonymous": 401, "compliance": 403, "engineer": 403, "admin": 403, "scoped": 404}
    for role, expected in decide.items():
        before = snapshot()
        for action in ("approve", "reject"):
            assert clients[role].post(f"/api/v1/requests/{request_id}/{action}/", {}, format="json").status_code == expected, (role, action)
        assert snapshot() == before
    approved = clients["approver"].post(f"/api/v1/requests/{request_id}/approve/", {"comment": "ok"}, format="json")
    assert approved.status_code == 200, approved.json()
    assert ChangeRequest.objects.get(pk=request_id).status == ChangeRequest.Status.EXECUTED
    # Starting a run: those who operate some target system.
    runs = {"anonymous": 401, "compliance": 403, "approver": 403, "admin": 403, "engineer": 202, "scoped": 202}
    for role, expected in runs.items():
        assert clients[role].post("/api/v1/runs/", {"reason": "matrix"}, format="json").status_code == expected, role
    # Releasing the lock: the platform admin (the lock is free here: refused as such, after the permission check).
    release = {"anonymous": 401, "compliance": 403, "engineer": 403, "approver": 403, "scoped": 403, "admin": 409}
    for role, expected in release.items():
        response = clients[role].post("/api/v1/lock/release/", {"reason": "stale"}, format="json")
        assert response.status_code == expected, role
    # Cancelling a run: its starter or a platform admin; finished runs are refused as such.
    run = Run.objects.filter(started_by__username="engineer").first()
    for role, expected in {"anonymous": 401, "scoped": 404, "engineer": 409, "admin": 409}.items():
        assert clients[role].post(f"/api/v1/runs/{run.pk}/cancel/", {}, format="json").status_code == expected, role
