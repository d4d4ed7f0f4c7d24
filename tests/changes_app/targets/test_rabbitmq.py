"""The rabbitmq kind and template against the real RabbitMQ: declarations, verify of existence with
the declared arguments, undo, compensation in reverse order, a kill in the middle, reconciliation."""

import time

import kombu
import pytest

from changes_app.models import Run
from changes_app.targets.base import target_systems
from tests.changes_app.targets.support import crash_run, issue, last_entry, next_action, results, run_pipeline, states, undo, verify

pytestmark = pytest.mark.django_db(transaction=True)


def topology_change(change_id: str, exchange: str, queue: str, *, bind: bool = True) -> str:
    binding = f"""
          - name: binding
            apply: {{bind_queue: {queue}, exchange: {exchange}, routing_key: "order.*"}}
            rollback: {{unbind_queue: {queue}, exchange: {exchange}, routing_key: "order.*"}}
    """
    return f"""
        id: {change_id}
        author: tests
        target: bus
        template: rabbitmq
        steps:
          - name: exchange
            apply: {{declare_exchange: {exchange}, type: topic}}
            rollback: {{delete_exchange: {exchange}}}
            verify: declared
          - name: queue
            apply:
              declare_queue: {queue}
              arguments: {{x-message-ttl: 60000, x-max-length: 1000}}
            rollback: {{delete_queue: {queue}}}
            verify: declared
    """ + (binding if bind else "")


def admin():
    return target_systems()["bus"].admin()


def test_rabbitmq_template_declares_verifies_with_arguments_and_undoes(make_pipeline, unique, rabbit_names):
    exchange, queue, change = rabbit_names("orders"), rabbit_names("billing"), f"topology-{unique}"
    make_pipeline({"events": {"0001_topology.yaml": topology_change(change, exchange, queue)}})

    run = run_pipeline()

    assert results(run) == {change: "APPLIED"}
    assert states(change) == ["STARTED", "APPLIED"]
    assert [step["step"] for step in last_entry(change).details["steps"]] == ["exchange", "queue", "binding"]
    broker = admin()
    assert broker.exchange_exists(exchange, type="topic", durable=True, auto_delete=False)
    assert broker.queue_exists(queue, durable=True, auto_delete=False, arguments={"x-message-ttl": 60000, "x-max-length": 1000})
    assert not broker.queue_exists(queue, durable=True, auto_delete=False, arguments={"x-message-ttl": 5}), "a different argument is refused"
    assert not broker.exchange_exists(exchange, type="direct"), "a different type is refused"
    # The binding routes: a message with a matching routing key reaches the queue.
    with broker.channel() as channel:
        kombu.Producer(channel).publish({"order": 1}, exchange=exchange, routing_key="order.created")
        deadline = time.monotonic() + 5
        while channel.queue_declare(queue, passive=True).message_count == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert channel.queue_declare(queue, passive=True).message_count == 1

    undone = undo(change)

    assert undone.status == Run.Status.SUCCEEDED, undone.status_reason
    assert states(change)[-3:] == ["ROLLBACK_STARTED", "ROLLED_BACK", "SKIPPED"]
    assert not admin().exchange_exists(exchange)
    assert not admin().queue_exists(queue)


def test_rabbitmq_verify_of_a_two_step_change_proves_both_declarations(make_pipeline, unique, rabbit_names):
    exchange, queue, change = rabbit_names("orders"), rabbit_names("billing"), f"topology-{unique}"
    make_pipeline({"events": {"0001_topology.yaml": topology_change(change, exchange, queue, bind=False)}})
    assert verify(change) is False

    run_pipeline()

    assert verify(change) is True
    broker = admin()
    broker.delete_queue(queue)
    broker.declare_queue(queue, arguments={"x-message-ttl": 5})
    assert verify(change) is False, "the queue exists, but not with the declared arguments"


def test_rabbitmq_code_change_gets_an_admin_named_rabbitmq(make_pipeline, unique, rabbit_names):
    queue, change = rabbit_names("audit"), f"queue-{unique}"
    make_pipeline(
        {
            "events": {
                "0001_queue.py": f"""
                    from changes_app.definitions import Change

                    class AuditQueue(Change):
                        id = "{change}"
                        author = "tests"
                        target = "bus"

                        def apply(self, rabbitmq):
                            rabbitmq.declare_queue("{queue}", arguments={{"x-queue-type": "classic"}})

                        def rollback(self, rabbitmq):
                            rabbitmq.delete_queue("{queue}")

                        def verify(self, rabbitmq):
                            return rabbitmq.queue_exists("{queue}")
                """
            }
        }
    )

    assert results(run_pipeline()) == {change: "APPLIED"}
    assert admin().queue_exists(queue, arguments={"x-queue-type": "classic"})
    assert verify(change) is True


def test_rabbitmq_failure_in_a_later_step_compensates_completed_steps_newest_first(make_pipeline, unique, rabbit_names):
    exchange, queue, change = rabbit_names("orders"), rabbit_names("billing"), f"topology-{unique}"
    make_pipeline(
        {
            "events": {
                "0001_topology.yaml": f"""
                    id: {change}
                    author: tests
                    target: bus
                    template: rabbitmq
                    steps:
                      - name: exchange
                        apply: {{declare_exchange: {exchange}, type: topic}}
                        rollback: {{delete_exchange: {exchange}}}
                      - name: queue
                        apply: {{declare_queue: {queue}, arguments: {{x-message-ttl: 60000}}}}
                        rollback: {{delete_queue: {queue}}}
                      - name: queue with another ttl
                        # The broker refuses an inequivalent redeclaration: PRECONDITION_FAILED.
                        apply: {{declare_queue: {queue}, arguments: {{x-message-ttl: 5}}}}
                        rollback: {{delete_queue: {queue}}}
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "ROLLED_BACK"}
    assert states(change) == ["STARTED", "FAILED", "ROLLBACK_STARTED", "ROLLED_BACK"]
    entry = last_entry(change)
    assert "PRECONDITION_FAILED" in entry.error
    assert [(o["step"], o.get("apply") or "rollback " + o["rollback"]) for o in entry.details["steps"]] == [
        ("exchange", "done"),
        ("queue", "done"),
        ("queue with another ttl", "failed"),
        ("queue", "rollback done"),
        ("exchange", "rollback done"),
    ]
    assert not admin().queue_exists(queue)
    assert not admin().exchange_exists(exchange)


def test_rabbitmq_change_killed_after_its_declarations_is_an_issue_whose_guidance_names_them(make_pipeline, unique, rabbit_names, subprocess_env):
    exchange, queue, change = rabbit_names("orders"), rabbit_names("billing"), f"topology-{unique}"
    make_pipeline({"events": {"0001_topology.yaml": topology_change(change, exchange, queue)}})

    crash_run(subprocess_env, "after_apply", change)

    assert states(change) == ["STARTED"]
    assert admin().queue_exists(queue)
    details = issue(change)
    assert details["next_action"] == "MANUAL_INTERVENTION", "a binding cannot be verified: a human decides"
    guidance = details["guidance"][1]
    assert f"exchange: declare exchange '{exchange}' (topic, durable)" in guidance
    assert f"queue: declare queue '{queue}' (durable, x-message-ttl=60000, x-max-length=1000)" in guidance
    assert f"binding: bind queue '{queue}' to '{exchange}' routing key 'order.*'" in guidance


def test_rabbitmq_started_change_whose_effect_is_present_is_reconciled_by_verify(make_pipeline, unique, rabbit_names, subprocess_env):
    exchange, queue, change = rabbit_names("orders"), rabbit_names("billing"), f"topology-{unique}"
    make_pipeline({"events": {"0001_topology.yaml": topology_change(change, exchange, queue, bind=False)}})
    crash_run(subprocess_env, "after_apply", change)
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert results(run) == {change: "RECONCILED"}
    assert states(change) == ["STARTED", "APPLIED"]
    assert last_entry(change).details["evidence"] == "verify probe found the effect present"
