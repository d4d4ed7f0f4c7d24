"""The redis kind and template against the real Redis: apply, verify, undo, compensation in reverse
order, a kill in the middle, and verify settling a STARTED change."""

import pytest

from changes_app.models import Run
from changes_app.pipeline.discovery import pipeline_load
from tests.changes_app.targets.support import crash_run, issue, last_entry, next_action, results, run_pipeline, states, undo, verify

pytestmark = pytest.mark.django_db(transaction=True)


def flag_change(change_id: str, prefix: str, *, with_verify: bool = True) -> str:
    return f"""
        id: {change_id}
        author: tests
        target: flags
        template: redis
        apply: |
          SET {prefix}flag on
          HSET {prefix}checkout provider stripe retries 3
          INCR {prefix}applied
        rollback: |
          DEL {prefix}flag {prefix}checkout {prefix}applied
    """ + (
        f"""
        verify:
          - command: GET {prefix}flag
            equals: "on"
          - command: HGETALL {prefix}checkout
            equals: {{provider: stripe, retries: 3}}
        """
        if with_verify
        else ""
    )


def test_redis_template_applies_once_verifies_and_undoes(make_pipeline, unique, redis_client):
    prefix, change = f"flk:{unique}:", f"flag-{unique}"
    make_pipeline({"flags": {"0001_flag.yaml": flag_change(change, prefix)}})

    run = run_pipeline()

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert states(change) == ["STARTED", "APPLIED"]
    assert last_entry(change).transaction_strategy == "NON_TRANSACTIONAL"
    assert last_entry(change).details["steps"] == [{"step": "step 1", "apply": "done"}]
    assert redis_client.get(f"{prefix}flag") == "on"
    assert redis_client.hgetall(f"{prefix}checkout") == {"provider": "stripe", "retries": "3"}
    assert verify(change) is True
    redis_client.hset(f"{prefix}checkout", "provider", "adyen")
    assert verify(change) is False, "verify compares the values, not only the keys"
    redis_client.hset(f"{prefix}checkout", "provider", "stripe")

    assert run_pipeline().status == Run.Status.NO_CHANGES
    assert redis_client.get(f"{prefix}applied") == "1"

    undone = undo(change)

    assert undone.status == Run.Status.SUCCEEDED, undone.status_reason
    assert states(change) == ["STARTED", "APPLIED", "ROLLBACK_STARTED", "ROLLED_BACK", "SKIPPED"]
    assert redis_client.exists(f"{prefix}flag", f"{prefix}checkout", f"{prefix}applied") == 0
    assert verify(change) is False


def test_redis_code_change_gets_a_client_named_redis(make_pipeline, unique, redis_client):
    key, change = f"flk:{unique}:allow", f"allow-{unique}"
    make_pipeline(
        {
            "flags": {
                "0001_allow.py": f"""
                    from changes_app.definitions import Change

                    class Allow(Change):
                        id = "{change}"
                        author = "tests"
                        target = "flags"

                        def apply(self, redis, context):
                            redis.sadd("{key}", "group:staff", context.change_id)

                        def rollback(self, redis):
                            redis.delete("{key}")

                        def verify(self, redis):
                            return redis.sismember("{key}", "group:staff")
                """
            }
        }
    )

    run = run_pipeline()

    assert results(run) == {change: "APPLIED"}
    assert redis_client.smembers(key) == {"group:staff", change}
    assert verify(change) is True


def test_redis_failure_in_a_later_step_compensates_completed_steps_newest_first(make_pipeline, unique, redis_client):
    prefix, change = f"flk:{unique}:", f"steps-{unique}"
    make_pipeline(
        {
            "flags": {
                "0001_steps.yaml": f"""
                    id: {change}
                    author: tests
                    target: flags
                    template: redis
                    steps:
                      - name: flag
                        apply: SET {prefix}flag on
                        rollback: |
                          DEL {prefix}flag
                          RPUSH {prefix}undone flag
                      - name: audience
                        apply: SADD {prefix}audience staff beta
                        rollback: |
                          DEL {prefix}audience
                          RPUSH {prefix}undone audience
                      - name: settings
                        # The flag key holds a string: HSET on it fails with WRONGTYPE at run time.
                        apply: HSET {prefix}flag provider stripe
                        rollback: HDEL {prefix}flag provider
                """
            }
        }
    )

    run = run_pipeline()

    assert run.status == Run.Status.FAILED
    assert results(run) == {change: "ROLLED_BACK"}
    assert states(change) == ["STARTED", "FAILED", "ROLLBACK_STARTED", "ROLLED_BACK"]
    rolled_back = last_entry(change)
    assert "WRONGTYPE" in rolled_back.error
    outcomes = rolled_back.details["steps"]
    assert outcomes[:3] == [
        {"step": "flag", "apply": "done"},
        {"step": "audience", "apply": "done"},
        {"step": "settings", "apply": "failed", "error": outcomes[2]["error"]},
    ]
    assert outcomes[3:] == [{"step": "audience", "rollback": "done"}, {"step": "flag", "rollback": "done"}]
    # The target itself shows the order: the newest completed step was undone first.
    assert redis_client.lrange(f"{prefix}undone", 0, -1) == ["audience", "flag"]
    assert redis_client.exists(f"{prefix}flag", f"{prefix}audience") == 0
    assert next_action(change) == "APPLY"


def test_redis_change_killed_after_its_effect_is_an_issue_whose_guidance_names_the_keys(make_pipeline, unique, redis_client, subprocess_env):
    prefix, change = f"flk:{unique}:", f"flag-{unique}"
    make_pipeline({"flags": {"0001_flag.yaml": flag_change(change, prefix, with_verify=False)}})

    crash_run(subprocess_env, "after_apply", change)

    assert states(change) == ["STARTED"]
    assert redis_client.get(f"{prefix}flag") == "on", "the child died after its effect reached Redis"
    details = issue(change)
    assert details["next_action"] == "MANUAL_INTERVENTION"
    assert "non-transactional" in details["guidance"][0]
    assert f"On 'flags' it does, in order: step 1: SET {prefix}flag on; HSET {prefix}checkout provider stripe retries 3" in details["guidance"][1]
    run = run_pipeline()
    assert run.status == Run.Status.BLOCKED
    assert redis_client.get(f"{prefix}applied") == "1", "a blocked stage runs nothing"


def test_redis_started_change_whose_effect_is_present_is_reconciled_by_verify(make_pipeline, unique, redis_client, subprocess_env):
    prefix, change = f"flk:{unique}:", f"flag-{unique}"
    make_pipeline({"flags": {"0001_flag.yaml": flag_change(change, prefix)}})
    crash_run(subprocess_env, "after_apply", change)
    assert states(change) == ["STARTED"]
    assert next_action(change) == "RECONCILE"

    run = run_pipeline()

    assert results(run) == {change: "RECONCILED"}
    assert states(change) == ["STARTED", "APPLIED"]
    assert last_entry(change).details["evidence"] == "verify probe found the effect present"
    assert redis_client.get(f"{prefix}applied") == "1", "reconciled, not applied a second time"


def test_redis_started_change_whose_effect_is_absent_waits_for_a_human(make_pipeline, unique, redis_client, subprocess_env):
    from changes_app import services
    from changes_app.governance.identity import cli_actor

    prefix, change = f"flk:{unique}:", f"flag-{unique}"
    make_pipeline({"flags": {"0001_flag.yaml": flag_change(change, prefix)}})
    crash_run(subprocess_env, "before_apply", change)

    blocked = run_pipeline()

    assert blocked.status == Run.Status.BLOCKED
    assert "verify probe found the effect absent" in blocked.results[0]["reason"]
    assert states(change) == ["STARTED"]
    services.change_fix(change_id=change, resolution="rolled-back", actor=cli_actor(), reason="nothing in Redis", source=Run.Source.CLI)
    assert results(run_pipeline()) == {change: "APPLIED"}
    assert redis_client.get(f"{prefix}applied") == "1"


def test_redis_template_steps_preview_their_commands(make_pipeline, unique):
    change = f"flag-{unique}"
    pipeline = make_pipeline({"flags": {"0001_flag.yaml": flag_change(change, f"flk:{unique}:")}})

    (step,) = pipeline_load().by_id[change].steps

    assert pipeline.valid, pipeline.problems
    assert step.preview == f"SET flk:{unique}:flag on; HSET flk:{unique}:checkout provider stripe retries 3; INCR flk:{unique}:applied"
