"""What an API call that is refused must leave exactly as it was."""

from __future__ import annotations

from audit_app.models import AuditCheckpoint
from changes_app.models import IdempotencyKey
from tests.support.governance import chain_head, snapshot


def state() -> dict:
    """The governance snapshot (audit head and count, rows, states, requests) plus the chain head's
    seq, the checkpoints and the idempotency records."""
    return snapshot() | {
        "chain_head": chain_head(),
        "checkpoints": AuditCheckpoint.objects.count(),
        "idempotency_keys": IdempotencyKey.objects.count(),
    }


def refused(response, status: int, code: str) -> dict:
    """Assert that ``response`` is the one error format with ``status`` and ``code``; its details."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["details"], dict), body
    return body["error"]["details"]
