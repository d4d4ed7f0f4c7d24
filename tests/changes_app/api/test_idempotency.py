"""Idempotency keys on the POSTs that start work (docs/api.md): the same key and body replays the first
response (``Idempotent-Replayed: true``) and starts nothing new; the same key with another body is a
422; keys belong to one user."""

from __future__ import annotations

import pytest

from audit_app.models import AuditEntry
from changes_app.models import Approval, ChangeRequest, IdempotencyKey, Run
from tests.changes_app.api.helpers import refused, state

pytestmark = pytest.mark.django_db(transaction=True)


def _post(client, path: str, body, key: str):
    return client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_the_same_key_and_body_replays_the_first_run_and_queues_one_run(world, clients):
    engineer = clients["engineer"]
    runs, queued = Run.objects.count(), AuditEntry.objects.filter(event="run.queued").count()
    first = _post(engineer, "/api/v1/runs/", {"reason": "release 1"}, "deploy-1")
    assert first.status_code == 202, first.json()
    assert "Idempotent-Replayed" not in first
    after_first = state()
    for body in ({"reason": "release 1"}, {"reason": "release 1"}):
        again = _post(engineer, "/api/v1/runs/", body, "deploy-1")
        assert again.status_code == 202
        assert again["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
    assert state() == after_first
    assert Run.objects.count() == runs + 1
    assert AuditEntry.objects.filter(event="run.queued").count() == queued + 1
    assert Run.objects.filter(pk=first.json()["id"]).exists()


def test_the_same_key_and_body_replays_a_request_and_a_decision_without_doing_them_twice(world, clients):
    body = {"kind": "UNDO", "change_id": world["db"], "reason": "slow writes"}
    first = _post(clients["engineer"], "/api/v1/requests/", body, "undo-1")
    assert first.status_code == 201, first.json()
    # Key order in the JSON body is not a different body.
    again = _post(clients["engineer"], "/api/v1/requests/", dict(reversed(body.items())), "undo-1")
    assert (again.status_code, again["Idempotent-Replayed"], again.json()) == (201, "true", first.json())
    assert ChangeRequest.objects.count() == 1
    request_id = first.json()["request"]["id"]

    rejected = _post(clients["approver"], f"/api/v1/requests/{request_id}/reject/", {"comment": "not now"}, "decide-1")
    assert rejected.status_code == 200, rejected.json()
    after = state()
    replay = _post(clients["approver"], f"/api/v1/requests/{request_id}/reject/", {"comment": "not now"}, "decide-1")
    assert (replay.status_code, replay["Idempotent-Replayed"], replay.json()) == (200, "true", rejected.json())
    assert state() == after
    assert Approval.objects.filter(request_id=request_id).count() == 1


def test_a_first_refusal_is_replayed_as_it_was(world, clients):
    body = {"kind": "UNDO", "change_id": world["db"], "reason": "r"}
    assert clients["engineer"].post("/api/v1/requests/", body, format="json").status_code == 201
    first = _post(clients["engineer"], "/api/v1/requests/", body, "dup-1")
    refused(first, 409, "request_duplicate")
    before = state()
    again = _post(clients["engineer"], "/api/v1/requests/", body, "dup-1")
    refused(again, 409, "request_duplicate")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert state() == before


def test_a_reused_key_with_another_body_or_endpoint_is_422_and_starts_nothing(world, clients):
    engineer = clients["engineer"]
    first = _post(engineer, "/api/v1/runs/", {"reason": "release 1"}, "deploy-2")
    assert first.status_code == 202
    before = state()
    for path, body in (
        ("/api/v1/runs/", {"reason": "release 2"}),
        ("/api/v1/runs/", {}),
        ("/api/v1/requests/", {"kind": "UNDO", "change_id": world["note"], "reason": "release 1"}),
    ):
        refused(_post(engineer, path, body, "deploy-2"), 422, "idempotency_key_reused")
    assert state() == before
    assert Run.objects.count() == 2  # the world's pipeline run and the first queued one


def test_keys_belong_to_one_user(world, clients):
    body = {"reason": "release 1"}
    mine = _post(clients["engineer"], "/api/v1/runs/", body, "shared-key")
    theirs = _post(clients["scoped"], "/api/v1/runs/", body, "shared-key")
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert "Idempotent-Replayed" not in theirs
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["actor"] != mine.json()["actor"]
    assert IdempotencyKey.objects.filter(key="shared-key").count() == 2
    # And a key of someone else's, with another body, is not a reuse for this user.
    other = _post(clients["scoped"], "/api/v1/runs/", {"reason": "mine"}, "deploy-of-engineer")
    assert other.status_code == 202


def test_an_overlong_key_is_400_invalid_and_starts_nothing(world, clients):
    before = state()
    details = refused(_post(clients["engineer"], "/api/v1/runs/", {"reason": "r"}, "k" * 256), 400, "invalid")
    assert "Idempotency-Key" in details
    assert state() == before
