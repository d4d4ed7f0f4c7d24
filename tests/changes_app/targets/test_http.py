"""The http kind and template against a real local HTTP server (examples/demo_saas.py): requests,
authentication, idempotency keys, retries only where safe, compensation, crashes and verify."""

import time

import pytest

from changes_app.models import Run
from changes_app.targets.base import TargetUnavailable, target_systems
from changes_app.targets.http import HttpStatusError
from tests.changes_app.targets.support import crash_run, issue, last_entry, next_action, results, run_pipeline, states, undo, verify

pytestmark = pytest.mark.django_db(transaction=True)


def webhook_change(change_id: str, name: str, *, with_verify: bool = True) -> str:
    return f"""
        id: {change_id}
        author: tests
        target: api
        template: http
        apply:
          method: POST
          path: /v1/webhooks
          body: {{name: {name}, url: "https://shop.example.com/hooks/{name}", events: [payment.settled]}}
          expect: 201
        rollback:
          method: DELETE
          path: /v1/webhooks/{name}
          expect: [204, 404]
    """ + (
        f"""
        verify:
          method: GET
          path: /v1/webhooks/{name}
          json: {{url: "https://shop.example.com/hooks/{name}"}}
        """
        if with_verify
        else ""
    )


def sent(saas, method: str | None = None) -> list[dict]:
    return [request for request in saas.state.requests if method is None or request["method"] == method]


def test_http_template_registers_verifies_and_undoes_with_token_and_idempotency_keys(make_pipeline, unique, saas):
    change = f"webhook-{unique}"
    make_pipeline({"payments": {"0001_webhook.yaml": webhook_change(change, "shop-payments")}})

    run = run_pipeline()

    assert results(run) == {change: "APPLIED"}
    assert states(change) == ["STARTED", "APPLIED"]
    assert saas.state.webhooks["shop-payments"]["url"] == "https://shop.example.com/hooks/shop-payments"
    (post,) = sent(saas, "POST")
    assert post["authorised"] is True
    assert post["idempotency_key"] == f"{change}:{run.id}"
    assert verify(change) is True
    saas.state.webhooks["shop-payments"]["url"] = "https://elsewhere.example.com/"
    assert verify(change) is False, "verify checks the answer's body, not only its status"
    saas.state.webhooks["shop-payments"]["url"] = "https://shop.example.com/hooks/shop-payments"

    undone = undo(change)

    assert undone.status == Run.Status.SUCCEEDED, undone.status_reason
    assert states(change) == ["STARTED", "APPLIED", "ROLLBACK_STARTED", "ROLLED_BACK", "SKIPPED"]
    assert "shop-payments" not in saas.state.webhooks
    (delete,) = sent(saas, "DELETE")
    assert delete["idempotency_key"] == f"{change}:{undone.id}:rollback"
    assert verify(change) is False
    assert all(request["authorised"] for request in sent(saas))


def test_http_post_is_never_retried_but_idempotent_requests_are(targets, saas, settings):
    system = target_systems()["api"]
    with system.session(atomic=False) as session:
        client = session["http"]
        saas.state.faults.append({"method": "POST", "path": "/v1/webhooks", "status": 503, "times": 1})
        with pytest.raises(HttpStatusError, match="answered 503"):
            client.post("/v1/webhooks", json={"name": "a", "url": "https://a.example.com/"}, idempotency_key="k-1")
        assert len(sent(saas, "POST")) == 1, "a POST may have been acted on: it is not sent twice"

        saas.state.faults.append({"method": "PUT", "path": "/v1/webhooks/b", "status": 503, "times": 1})
        client.put("/v1/webhooks/b", json={"url": "https://b.example.com/"}, idempotency_key="k-2")
        assert [request["status"] for request in sent(saas, "PUT")] == [503, 200]

        saas.state.faults.append({"method": "GET", "path": "/v1/webhooks/b", "status": 502, "times": 2})
        assert client.get("/v1/webhooks/b").json()["url"] == "https://b.example.com/"
        assert [request["status"] for request in sent(saas, "GET")] == [502, 502, 200]


def test_http_post_with_an_idempotency_key_is_retried_where_the_api_honours_it(targets, saas, settings):
    settings.FLAMINGOCK_TARGET_SYSTEMS = {**targets, "api": {**targets["api"], "honours_idempotency_key": True}}
    client = target_systems()["api"].client()
    saas.state.faults.append({"method": "POST", "path": "/v1/webhooks", "status": 503, "times": 1})

    created = client.post("/v1/webhooks", json={"name": "a", "url": "https://a.example.com/"}, idempotency_key="k-1", expect=201)

    assert created.json()["name"] == "a"
    assert [(r["status"], r["idempotency_key"]) for r in sent(saas, "POST")] == [(503, "k-1"), (201, "k-1")]
    replay = client.post("/v1/webhooks", json={"name": "a", "url": "https://a.example.com/"}, idempotency_key="k-1", expect=201)
    assert replay.json() == created.json(), "the API answers a repeated key with the first answer"
    assert len(saas.state.webhooks) == 1


def test_http_read_timeout_is_retried_for_a_get_but_never_for_a_post(targets, saas, settings):
    settings.FLAMINGOCK_TARGET_SYSTEMS = {**targets, "api": {**targets["api"], "timeout": {"connect": 2, "read": 0.3}, "retries": 1}}
    client = target_systems()["api"].client()
    saas.state.faults.append({"method": "GET", "path": "/v1/webhooks", "delay": 1, "times": 1})
    saas.state.faults.append({"method": "POST", "path": "/v1/webhooks", "delay": 1, "times": 1})

    assert client.get("/v1/webhooks").json() == []
    with pytest.raises(TargetUnavailable, match="POST /v1/webhooks failed: .*[Rr]ead timed out"):
        client.post("/v1/webhooks", json={"name": "slow", "url": "https://s.example.com/"}, idempotency_key="k-1")

    deadline = time.monotonic() + 5  # the server finishes the slow POST after the client gave up
    while len(sent(saas)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["method"] for r in sent(saas)] == ["GET", "GET", "POST"], "the slow GET was sent again, the slow POST only once"
    assert "slow" in saas.state.webhooks, "the API acted on the POST that timed out: sending it again would register it twice"


def test_http_client_refuses_a_url_outside_its_base_url(targets, saas):
    client = target_systems()["api"].client()

    with pytest.raises(ValueError, match="relative to the target's base URL"):
        client.get("https://attacker.example.com/steal")

    assert sent(saas) == []


def test_http_failure_in_a_later_step_compensates_completed_steps_newest_first(make_pipeline, unique, saas):
    change = f"hooks-{unique}"
    make_pipeline(
        {
            "payments": {
                "0001_hooks.yaml": f"""
                    id: {change}
                    author: tests
                    target: api
                    template: http
                    steps:
                      - name: payments hook
                        apply: {{method: POST, path: /v1/webhooks, body: {{name: payments, url: "https://s.example.com/p"}}, expect: 201}}
                        rollback: {{method: DELETE, path: /v1/webhooks/payments}}
                      - name: refunds hook
                        apply: {{method: POST, path: /v1/webhooks, body: {{name: refunds, url: "https://s.example.com/r"}}, expect: 201}}
                        rollback: {{method: DELETE, path: /v1/webhooks/refunds}}
                      - name: payments hook again
                        apply: {{method: POST, path: /v1/webhooks, body: {{name: payments, url: "https://s.example.com/p"}}, expect: 201}}
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "ROLLED_BACK"}
    assert states(change) == ["STARTED", "FAILED", "ROLLBACK_STARTED", "ROLLED_BACK"]
    assert "POST /v1/webhooks answered 409 (expected 201)" in last_entry(change).error
    assert [(r["method"], r["path"], r["status"]) for r in sent(saas)] == [
        ("POST", "/v1/webhooks", 201),
        ("POST", "/v1/webhooks", 201),
        ("POST", "/v1/webhooks", 409),
        ("DELETE", "/v1/webhooks/refunds", 204),
        ("DELETE", "/v1/webhooks/payments", 204),
    ]
    assert [r["idempotency_key"] for r in sent(saas)] == [
        f"{change}:{run.id}:1",
        f"{change}:{run.id}:2",
        f"{change}:{run.id}:3",
        f"{change}:{run.id}:2:rollback",
        f"{change}:{run.id}:1:rollback",
    ]
    assert saas.state.webhooks == {}
    assert [o.get("rollback") and o["step"] for o in last_entry(change).details["steps"][3:]] == ["refunds hook", "payments hook"]


def test_http_change_killed_after_its_request_is_an_issue_whose_guidance_names_the_request(make_pipeline, unique, saas, subprocess_env):
    change = f"webhook-{unique}"
    make_pipeline({"payments": {"0001_webhook.yaml": webhook_change(change, "shop-payments", with_verify=False)}})

    crash_run(subprocess_env, "after_apply", change)

    assert states(change) == ["STARTED"]
    assert "shop-payments" in saas.state.webhooks
    details = issue(change)
    assert details["next_action"] == "MANUAL_INTERVENTION"
    assert "On 'api' it does, in order: step 1: POST /v1/webhooks" in details["guidance"][1]
    assert '"name": "shop-payments"' in details["guidance"][1]


def test_http_started_change_whose_effect_is_present_is_reconciled_by_verify(make_pipeline, unique, saas, subprocess_env):
    change = f"webhook-{unique}"
    make_pipeline({"payments": {"0001_webhook.yaml": webhook_change(change, "shop-payments")}})
    crash_run(subprocess_env, "after_apply", change)
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert results(run) == {change: "RECONCILED"}
    assert states(change) == ["STARTED", "APPLIED"]
    assert len(sent(saas, "POST")) == 1, "reconciled, not registered a second time"
