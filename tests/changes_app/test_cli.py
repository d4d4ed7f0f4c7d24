"""``manage.py flamingock`` (docs/semantics.md §12): every subcommand's JSON, its exit codes and their precedence,
and the step-by-step guidance of ``issues get``."""

import json
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.locks.backends import lock_backend
from changes_app.models import Run
from changes_app.services import plan as plan_service
from changes_app.services import runs as run_service
from tests.conftest import REPO, manage
from tests.support.trails import cli, crash_run, journal_change, ledger, local_operator, python_sql_change, run_pipeline, sql_change, written

pytestmark = pytest.mark.django_db(transaction=True)

RUN_KEYS = {"run_id", "kind", "status", "reason", "environment", "actor", "counts", "results", "started_at", "finished_at"}
RESULT_KEYS = {"change_id", "stage", "order", "action", "result", "reason", "duration_ms", "error", "entry_ids"}
PLAN_KEYS = {"environment", "digest", "changes", "missing_from_code", "summary"}
PLAN_ITEM_KEYS = {"stage", "order", "id", "target", "strategy", "latest_state", "next_action", "reason", "checksum", "recorded_checksum"}
VALIDATE_KEYS = {"valid", "exit_code", "checksum_drift", "missing_from_code", "blocked", "awaiting_approval", "pending"}
ISSUE_KEYS = {
    "id",
    "stage",
    "order",
    "target",
    "strategy",
    "latest_state",
    "next_action",
    "reason",
    "error",
    "rollback_error",
    "error_entry",
    "guidance",
}
AUDIT_KEYS = {
    "id",
    "created_at",
    "event",
    "change_id",
    "stage",
    "target",
    "state",
    "actor",
    "host",
    "run_id",
    "fencing_token",
    "checksum",
    "reason",
    "error",
}


def table(unique, name="t"):
    return f"CREATE TABLE {name}_{unique} (id integer)", f"DROP TABLE {name}_{unique}"


@pytest.fixture
def approval_needed(monkeypatch):
    """Make the named changes wait for an approval (the hook governance plugs into)."""
    waiting: set[str] = set()
    hook = lambda: lambda change: "needs an approval" if change.id in waiting else ""  # noqa: E731
    # The plan and the run each read the hook under their own module's name.
    monkeypatch.setattr(plan_service, "approval_hook", hook)
    monkeypatch.setattr(run_service, "approval_hook", hook)
    return waiting


# -- plan and run ------------------------------------------------------------------------------------------


def test_plan_json_gives_each_change_its_state_and_next_action(make_pipeline, unique, journal):
    done, todo = f"done-{unique}", f"todo-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(done)}})
    run_pipeline()
    make_pipeline({"main": {"0001_a.py": journal_change(done), "0002_b.yaml": sql_change(todo, *table(unique))}})

    result = cli("plan", "--json")

    assert result.code == 0
    plan = result.json()
    assert PLAN_KEYS <= set(plan)
    assert all(PLAN_ITEM_KEYS <= set(item) for item in plan["changes"])
    assert [(c["id"], c["latest_state"], c["next_action"], c["strategy"]) for c in plan["changes"]] == [
        (done, "APPLIED", "SKIP", "NON_TRANSACTIONAL"),
        (todo, None, "APPLY", "SHARED_TRANSACTION"),
    ]
    assert plan["summary"] == {"APPLY": 1, "SKIP": 1}
    text = cli("plan")
    assert text.code == 0 and "NEXT ACTION" in text.out and todo in text.out


def test_run_json_reports_every_result_and_exits_zero(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(first, *table(unique)), "0002_b.py": journal_change(second)}})

    result = cli("run", "--json")

    assert result.code == 0, result.out
    data = result.json()
    assert RUN_KEYS <= set(data)
    assert (data["kind"], data["status"], data["environment"]) == ("PIPELINE", "SUCCEEDED", "dev")
    assert all(RESULT_KEYS <= set(row) for row in data["results"])
    assert [(row["change_id"], row["result"]) for row in data["results"]] == [(first, "APPLIED"), (second, "APPLIED")]
    assert data["counts"] == {"APPLIED": 2}
    nothing = cli("run", "--json")
    assert (nothing.code, nothing.json()["status"]) == (0, "NO_CHANGES")


def test_run_dry_run_prints_the_plan_and_changes_nothing(make_pipeline, unique):
    change = f"dry-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})
    before = written()

    result = cli("run", "--dry-run", "--json")

    assert result.code == 0
    assert [item["next_action"] for item in result.json()["changes"]] == ["APPLY"]
    assert written() == before


def test_run_cancel_json_requests_the_cancellation(make_pipeline, unique):
    make_pipeline({"main": {}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)

    result = cli("run", "cancel", str(queued.id), "--json")

    assert result.code == 0
    assert {"run_id", "status", "cancel_requested_by"} <= set(result.json())
    assert (result.json()["run_id"], result.json()["status"]) == (str(queued.id), "ABORTED")
    assert cli("run", "cancel", str(queued.id)).code == 2  # already finished
    assert cli("run", "cancel").code == 2
    assert cli("run", "cancel", "not-a-uuid").code == 2


# -- exit codes of run ----------------------------------------------------------------------------------------


def test_run_exits_one_when_a_change_failed_even_if_another_stage_is_blocked(make_pipeline, unique, journal):
    stuck, broken = f"stuck-{unique}", f"broken-{unique}"
    make_pipeline({"held": {"0001_a.py": journal_change(stuck, fail="half way")}})
    run_pipeline()
    make_pipeline(
        {
            "held": {"0001_a.py": journal_change(stuck, fail="half way")},
            "other": {"0001_b.py": python_sql_change(broken, *table(unique)[:1], raise_after="broken")},
        }
    )

    result = cli("run", "--json")

    assert result.code == 1
    assert result.json()["status"] == "FAILED"
    assert {row["change_id"]: row["result"] for row in result.json()["results"]} == {stuck: "BLOCKED", broken: "FAILED"}


def test_run_exits_three_when_a_stage_is_blocked(make_pipeline, unique, journal):
    stuck, later = f"stuck-{unique}", f"later-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(stuck, fail="half way"), "0002_b.py": journal_change(later)}})
    assert cli("run").code == 1

    result = cli("run", "--json")

    assert result.code == 3
    assert result.json()["status"] == "BLOCKED"
    assert ledger(stuck, later) == [(stuck, "STARTED"), (stuck, "FAILED")]


def test_run_exits_four_when_a_change_awaits_approval(make_pipeline, unique, journal, approval_needed):
    first, gated, after = f"first-{unique}", f"gated-{unique}", f"after-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": journal_change(gated), "0003_c.py": journal_change(after)}})
    approval_needed.add(gated)

    result = cli("run", "--json")

    assert result.code == 4, result.out
    assert result.json()["status"] == "AWAITING_APPROVAL"
    assert {row["change_id"]: row["result"] for row in result.json()["results"]} == {first: "APPLIED", gated: "AWAITING_APPROVAL", after: "BLOCKED"}
    assert ledger(first, gated, after) == [(first, "STARTED"), (first, "APPLIED")]
    assert journal.count(change=gated) == 0 and journal.count(change=after) == 0


def test_run_exits_five_when_the_lock_is_held(make_pipeline, unique, journal, settings):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change)}})
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "wait_seconds": 0.2}
    from audit_app.services import Actor

    lock_backend().try_acquire(run_id=uuid.uuid4(), actor=Actor(name="busy-runner"))

    result = cli("run", "--json")

    assert result.code == 5
    assert result.json()["status"] == "LOCKED"
    assert "busy-runner" in result.json()["reason"]
    assert ledger(change) == []


def test_invalid_pipeline_exits_two_with_its_problems(make_pipeline, unique):
    make_pipeline({"main": {"0001_a.yaml": sql_change(f"ok-{unique}", *table(unique)), "no_prefix.yaml": sql_change(f"bad-{unique}", "SELECT 1")}})
    before = written()

    for args in (("plan", "--json"), ("run", "--json"), ("validate", "--json"), ("issues", "--json")):
        result = cli(*args)
        assert result.code == 2, args
        assert [problem["code"] for problem in result.json()["problems"]] == ["bad-order"], args

    assert written() == before


def test_usage_errors_exit_two(make_pipeline, unique):
    change = f"ok-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})

    assert cli("issues", "get").code == 2
    assert cli("issues", "get", "no-such-change").code == 2
    assert cli("issues", "get", change).code == 2  # not an issue
    assert cli("undo", "no-such-change", "--reason", "x").code == 2
    assert cli("audit", "list", "--since", "yesterday-ish").code == 2
    refused = cli("undo", change, "--reason", "x", "--json")
    assert refused.code == 2
    assert refused.json()["exit_code"] == 2 and "is not applied" in refused.json()["error"]


# -- validate ---------------------------------------------------------------------------------------------------


def test_validate_exits_seven_while_changes_are_pending_then_zero(make_pipeline, unique):
    change = f"pending-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})

    pending = cli("validate", "--json")
    assert pending.code == 7
    assert VALIDATE_KEYS <= set(pending.json())
    assert (pending.json()["pending"], pending.json()["valid"]) == ([change], False)

    run_pipeline()
    valid = cli("validate", "--json")
    assert valid.code == 0
    assert {key: valid.json()[key] for key in VALIDATE_KEYS} == {
        "valid": True,
        "exit_code": 0,
        "checksum_drift": [],
        "missing_from_code": [],
        "blocked": [],
        "awaiting_approval": [],
        "pending": [],
    }


def test_validate_exits_six_on_drift_before_anything_pending(make_pipeline, unique):
    edited, pending = f"edited-{unique}", f"pending-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(edited, *table(unique))}})
    run_pipeline()
    make_pipeline(
        {
            "main": {
                "0001_a.yaml": sql_change(edited, *table(unique), extra="description: edited\n"),
                "0002_b.yaml": sql_change(pending, *table(unique, "p")),
            }
        }
    )

    result = cli("validate", "--json")

    assert result.code == 6
    assert result.json()["checksum_drift"] == [edited]


def test_validate_exits_six_when_an_applied_change_is_missing_from_code(make_pipeline, unique):
    gone, kept = f"gone-{unique}", f"kept-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(gone, *table(unique)), "0002_b.yaml": sql_change(kept, *table(unique, "k"))}})
    run_pipeline()
    make_pipeline({"main": {"0002_b.yaml": sql_change(kept, *table(unique, "k"))}}, replace=True)

    result = cli("validate", "--json")

    assert result.code == 6
    assert result.json()["missing_from_code"] == [gone]


def test_validate_exits_three_when_blocked_before_awaiting_approval(make_pipeline, unique, journal, approval_needed):
    stuck, gated = f"stuck-{unique}", f"gated-{unique}"
    make_pipeline({"one": {"0001_a.py": journal_change(stuck, fail="half way")}})
    run_pipeline()
    make_pipeline({"one": {"0001_a.py": journal_change(stuck, fail="half way")}, "two": {"0001_b.py": journal_change(gated)}})
    approval_needed.add(gated)

    result = cli("validate", "--json")

    assert result.code == 3
    assert (result.json()["blocked"], result.json()["awaiting_approval"]) == ([stuck], [gated])


def test_validate_exits_four_when_awaiting_approval_before_pending(make_pipeline, unique, journal, approval_needed):
    gated, free = f"gated-{unique}", f"free-{unique}"
    make_pipeline({"one": {"0001_a.py": journal_change(gated)}, "two": {"0001_b.py": journal_change(free)}})
    approval_needed.add(gated)

    result = cli("validate", "--json")

    assert result.code == 4
    assert (result.json()["awaiting_approval"], result.json()["pending"]) == ([gated], [free])


# -- issues -------------------------------------------------------------------------------------------------------


def test_issues_lists_the_changes_needing_a_human_with_their_error(make_pipeline, unique, journal):
    stuck, fine = f"stuck-{unique}", f"fine-{unique}"
    make_pipeline({"one": {"0001_a.py": journal_change(stuck, fail=f"disk full {unique}")}, "two": {"0001_b.py": journal_change(fine)}})
    assert cli("issues", "--json").json() == []
    run_pipeline()

    result = cli("issues", "--json")

    assert result.code == 0
    (issue,) = result.json()
    assert ISSUE_KEYS <= set(issue)
    assert (issue["id"], issue["latest_state"], issue["next_action"], issue["strategy"]) == (
        stuck,
        "FAILED",
        "MANUAL_INTERVENTION",
        "NON_TRANSACTIONAL",
    )
    assert f"RuntimeError: disk full {unique}" in issue["error"]
    assert issue["guidance"]
    assert stuck in cli("issues").out


def test_issues_get_prints_step_by_step_guidance_naming_the_change_and_the_fix_commands(make_pipeline, unique, journal, subprocess_env):
    change = f"stuck-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change)}})
    crash_run(subprocess_env, "after_started", change)

    result = cli("issues", "get", change)

    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].startswith(f"{change} (main:0001, target journal, NON_TRANSACTIONAL)")
    assert "state: STARTED  next action: MANUAL_INTERVENTION" in lines
    steps = lines[lines.index("what to do:") + 1 :]
    assert [line.split(".", 1)[0].strip() for line in steps] == [str(n) for n in range(1, len(steps) + 1)]
    assert any(f'python manage.py flamingock fix {change} --resolution applied --reason "..."' in line for line in steps)
    assert any(f'python manage.py flamingock fix {change} --resolution rolled-back --reason "..."' in line for line in steps)
    assert f"{change} on target system 'journal' started but never finished" in steps[0]

    as_json = cli("issues", "get", change, "--json")
    assert as_json.code == 0 and ISSUE_KEYS <= set(as_json.json())
    assert as_json.json()["guidance"] == [line.split(". ", 1)[1] for line in steps]


def test_issues_get_for_a_rollback_failure_shows_both_errors(make_pipeline, unique, journal):
    change = f"stuck-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change, fail="apply broke", rollback="fail")}})
    run_pipeline()

    result = cli("issues", "get", change)

    assert result.code == 0
    assert "error:" in result.out and "RuntimeError: apply broke" in result.out
    assert "rollback error:" in result.out and "RuntimeError: rollback exploded" in result.out
    assert f"fix {change} --resolution rolled-back" in result.out


# -- acting subcommands ---------------------------------------------------------------------------------------


def test_fix_json_resolves_an_issue(make_pipeline, unique, journal):
    change = f"stuck-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change, fail="half way")}})
    run_pipeline()

    result = cli("fix", change, "--resolution", "rolled-back", "--reason", "cleaned up by hand", "--json")

    assert result.code == 0, result.out
    assert RUN_KEYS <= set(result.json())
    assert (result.json()["kind"], result.json()["status"]) == ("FIX", "SUCCEEDED")
    assert ledger(change) == [(change, "STARTED"), (change, "FAILED"), (change, "MANUAL_MARKED_AS_ROLLED_BACK")]
    assert cli("fix", change, "--resolution", "applied", "--reason", "again").code == 2


def test_undo_skip_reapply_json_through_the_cli(make_pipeline, unique, journal):
    applied, other = f"applied-{unique}", f"other-{unique}"
    make_pipeline({"one": {"0001_a.yaml": sql_change(applied, *table(unique))}})
    run_pipeline()
    make_pipeline({"one": {"0001_a.yaml": sql_change(applied, *table(unique))}, "two": {"0001_b.py": journal_change(other)}})

    undone = cli("undo", applied, "--reason", "bad deploy", "--json")
    skipped = cli("skip", other, "--reason", "not in this region", "--json")
    released = cli("reapply", applied, "--reason", "fixed", "--json")

    for result, kind in ((undone, "UNDO"), (skipped, "SKIP"), (released, "REAPPLY")):
        assert result.code == 0, result.out
        assert RUN_KEYS <= set(result.json())
        assert (result.json()["kind"], result.json()["status"]) == (kind, "SUCCEEDED")
    assert ledger(applied, other) == [
        (applied, "APPLIED"),
        (applied, "ROLLED_BACK"),
        (applied, "SKIPPED"),
        (other, "SKIPPED"),
        (applied, "MANUAL_MARKED_AS_ROLLED_BACK"),
    ]
    assert cli("skip", other, "--reason", "twice").code == 2


def test_accept_checksum_json_rebaselines_through_the_cli(make_pipeline, unique):
    change = f"edited-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})
    run_pipeline()
    assert cli("accept-checksum", change, "--reason", "no drift yet").code == 2
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique), extra="description: documented\n")}})
    assert cli("validate").code == 6

    result = cli("accept-checksum", change, "--reason", "description only", "--json")

    assert result.code == 0, result.out
    assert (result.json()["kind"], result.json()["status"]) == ("ACCEPT_CHECKSUM", "SUCCEEDED")
    assert ledger(change) == [(change, "APPLIED"), (change, "change.checksum_accepted")]
    assert cli("validate").code == 0


# -- audit list and lock status -------------------------------------------------------------------------------


def test_audit_list_json_latest_history_change_and_since(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.yaml": sql_change(second, *table(unique))}})
    run_pipeline()

    latest = cli("audit", "list", "--json")
    assert latest.code == 0
    assert all(AUDIT_KEYS <= set(row) for row in latest.json())
    assert [(row["change_id"], row["state"]) for row in latest.json()] == [(first, "APPLIED"), (second, "APPLIED")]

    history = cli("audit", "list", "--history", "--change", first, "--json").json()
    assert [(row["change_id"], row["state"], row["event"]) for row in history] == [
        (first, "STARTED", "change.started"),
        (first, "APPLIED", "change.applied"),
    ]
    assert [row["id"] for row in history] == sorted(row["id"] for row in history)

    one = cli("audit", "list", "--change", second, "--json").json()
    assert [(row["change_id"], row["state"]) for row in one] == [(second, "APPLIED")]

    everything = AuditEntry.objects.count()
    since_past = cli("audit", "list", "--since", (timezone.now() - timedelta(days=1)).date().isoformat(), "--json").json()
    assert len(since_past) == everything
    assert {row["event"] for row in since_past} >= {"run.queued", "lock.acquired", "change.applied", "run.finished"}
    since_future = cli("audit", "list", "--since", (timezone.now() + timedelta(hours=1)).isoformat(), "--history", "--json").json()
    assert since_future == []


def test_lock_status_json_shows_the_holder(make_pipeline, unique):
    make_pipeline({"main": {}})
    from audit_app.services import Actor

    free = cli("lock", "status", "--json")
    assert (free.code, free.json()) == (0, {"held": False, "holder": None})
    lease = lock_backend().try_acquire(run_id=uuid.uuid4(), actor=Actor(name="holder-x"))

    held = cli("lock", "status", "--json")

    assert held.code == 0
    assert held.json()["held"] is True
    assert {"name", "run_id", "holder", "host", "pid", "token", "since", "expires_at", "expired"} <= set(held.json()["holder"])
    assert (held.json()["holder"]["holder"], held.json()["holder"]["token"]) == ("holder-x", lease.token)
    assert "held by holder-x" in cli("lock", "status").out


# -- a lean command line -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_line_starts_without_celery_and_django_celery_beat(make_pipeline, unique, subprocess_env):
    """``manage.py flamingock`` never touches the periodic tasks: it leaves django-celery-beat out
    (settings.FLAMINGOCK_CLI), and with it Celery and the time-zone table, yet plans as before."""
    make_pipeline({"s": {"0001_c.yaml": sql_change(f"c-{unique}", *table(unique))}})
    command = [sys.executable, "-X", "importtime", str(REPO / "manage.py"), "flamingock", "plan", "--json"]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [item["id"] for item in json.loads(result.stdout)["changes"]] == [f"c-{unique}"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert len(imported) > 100  # the probe works: Django's own modules are listed
    assert not {name for name in imported if name.split(".")[0] in {"celery", "kombu", "django_celery_beat", "timezone_field"}}


@pytest.mark.slow
def test_every_other_command_keeps_django_celery_beat(subprocess_env):
    probe = "from django.apps import apps; print(apps.is_installed('django_celery_beat'))"
    result = manage("shell", "--no-imports", "-c", probe, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.slow
def test_the_command_line_keeps_what_it_loaded_out_of_the_collectors_sight(make_pipeline, unique, subprocess_env):
    """``manage.py flamingock`` starts with the cyclic collector off; once start-up and discovery
    are done their objects are frozen and the collector is on for the command's own work
    (changes_app/collector.py)."""
    make_pipeline({"s": {"0001_c.yaml": sql_change(f"c-{unique}", *table(unique))}})
    probe = (
        "import gc, sys; sys.argv = ['manage.py', 'flamingock', 'plan', '--json']; import manage; manage.main(); "
        "from changes_app.pipeline.discovery import pipeline_load; import changes_app; "
        "print('GC', gc.isenabled(), gc.get_freeze_count(), gc.is_tracked(changes_app.__dict__), len(pipeline_load().stages))"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'"c-{unique}"' in result.stdout
    enabled, frozen, _, stages = result.stdout.strip().splitlines()[-1].split()[1:]
    assert enabled == "True"
    assert int(frozen) > 10_000  # Django's models and the pipeline: tens of thousands of objects
    assert stages == "1"
