"""The resolver table of docs/semantics.md §4, row by row, and the stage rules around it.

Each row writes the latest state through the real ledger writer, then asks
``services.pipeline_plan()``, exactly as ``flamingock plan`` does. Kinds of change:
``journal`` (non-transactional target), ``app-db`` (shared transaction with the audit database)
and ``ext-pg`` (a separate PostgreSQL database, marker strategy).
"""

import pytest

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from audit_app.services import change_states
from changes_app import services
from changes_app.definitions import Strategy
from changes_app.engine import executor as engine
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.pipeline.plan import Action, plan_build
from changes_app.targets.base import target_systems
from tests.support.ledger import change_source, entries_of, state_record

pytestmark = pytest.mark.django_db

NON_TRANSACTIONAL = ["journal"]
TRANSACTIONAL = ["app-db", "ext-pg"]
EVERY_KIND = NON_TRANSACTIONAL + TRANSACTIONAL
STRATEGY_OF_KIND = {"journal": Strategy.NON_TRANSACTIONAL, "app-db": Strategy.SHARED_TRANSACTION, "ext-pg": Strategy.MARKER}


@pytest.fixture
def planned(make_pipeline, unique):
    """``planned(kind, state, **options)``: the plan item of one change of ``kind`` whose latest
    state is ``state`` (``None`` for a change never run)."""

    def plan_one(kind, state, **options):
        change_id = f"{kind}-{unique}"
        pipeline = make_pipeline({"main": {"0001_change.py": change_source(change_id, kind, **options)}})
        if state is not None:
            state_record(pipeline.by_id[change_id], state)
        item = services.pipeline_plan().item(change_id)
        assert item.strategy == STRATEGY_OF_KIND[kind]
        return item

    return plan_one


# -- the table, one row at a time -------------------------------------------------------------


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_never_applied_change_is_applied(planned, kind):
    item = planned(kind, None)
    assert (item.action, item.reason) == (Action.APPLY, "never applied")


@pytest.mark.parametrize("state", [S.APPLIED, S.MANUAL_MARKED_AS_APPLIED, S.SKIPPED])
@pytest.mark.parametrize("kind", EVERY_KIND)
def test_applied_or_skipped_change_is_skipped(planned, kind, state):
    item = planned(kind, state)
    assert item.action == Action.SKIP
    assert item.latest_state == state


def test_started_non_transactional_change_needs_manual_intervention(planned):
    item = planned("journal", S.STARTED)
    assert item.action == Action.MANUAL_INTERVENTION
    assert "started but not finished" in item.reason


def test_started_non_transactional_always_retry_change_is_applied_again(planned):
    assert planned("journal", S.STARTED, recovery="ALWAYS_RETRY").action == Action.APPLY


def test_started_non_transactional_change_with_verify_is_reconciled(planned):
    item = planned("journal", S.STARTED, verify=True)
    assert item.action == Action.RECONCILE
    assert "verify" in item.reason


def test_started_marker_change_is_reconciled_by_its_marker(planned):
    item = planned("ext-pg", S.STARTED)
    assert item.action == Action.RECONCILE
    assert "marker" in item.reason


def test_started_marker_change_is_reconciled_even_with_manual_intervention_recovery(planned):
    # The marker is evidence, not a guess: recovery only matters when there is no evidence.
    assert planned("ext-pg", S.STARTED, recovery="MANUAL_INTERVENTION").action == Action.RECONCILE


def test_started_shared_transaction_change_is_never_guessed(planned):
    # "Cannot occur" for a shared transaction; if a ledger says so anyway, a human decides.
    assert planned("app-db", S.STARTED).action == Action.MANUAL_INTERVENTION


def test_failed_non_transactional_change_needs_manual_intervention(planned):
    item = planned("journal", S.FAILED)
    assert item.action == Action.MANUAL_INTERVENTION
    assert "partly changed" in item.reason


def test_failed_non_transactional_always_retry_change_is_applied_again(planned):
    assert planned("journal", S.FAILED, recovery="ALWAYS_RETRY").action == Action.APPLY


@pytest.mark.parametrize("kind", TRANSACTIONAL)
def test_failed_transactional_change_is_applied_again(planned, kind):
    item = planned(kind, S.FAILED)
    assert item.action == Action.APPLY
    assert "nothing was committed" in item.reason


@pytest.mark.parametrize("state", [S.ROLLED_BACK, S.MANUAL_MARKED_AS_ROLLED_BACK])
@pytest.mark.parametrize("kind", EVERY_KIND)
def test_rolled_back_change_is_applied(planned, kind, state):
    assert planned(kind, state).action == Action.APPLY


@pytest.mark.parametrize("state", [S.ROLLBACK_STARTED, S.ROLLBACK_FAILED])
@pytest.mark.parametrize("kind", EVERY_KIND)
def test_unfinished_rollback_needs_manual_intervention(planned, kind, state):
    item = planned(kind, state)
    assert item.action == Action.MANUAL_INTERVENTION
    assert "rollback did not complete" in item.reason


@pytest.mark.parametrize("state", [S.ROLLBACK_STARTED, S.ROLLBACK_FAILED])
def test_unfinished_rollback_needs_manual_intervention_even_with_always_retry(planned, state):
    assert planned("journal", state, recovery="ALWAYS_RETRY").action == Action.MANUAL_INTERVENTION


# -- stage rules ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_manual_intervention_blocks_its_whole_stage_while_another_stage_runs(make_pipeline, unique, journal):
    pipeline = make_pipeline(
        {
            "held": {
                "0001_before.py": change_source(f"before-{unique}", "journal"),
                "0002_started.py": change_source(f"started-{unique}", "journal"),
                "0003_after.py": change_source(f"after-{unique}", "app-db"),
            },
            "free": {
                "0001_table.py": change_source(f"table-{unique}", "app-db"),
                "0002_note.py": change_source(f"note-{unique}", "journal"),
            },
        }
    )
    state_record(pipeline.by_id[f"started-{unique}"], S.STARTED)

    plan = services.pipeline_plan()
    held, free = plan.stages
    assert held.blocked_by.change.id == f"started-{unique}"
    assert [item.action for item in held.items] == [Action.BLOCKED, Action.MANUAL_INTERVENTION, Action.BLOCKED]
    assert all(f"held by started-{unique}" in item.reason for item in (held.items[0], held.items[2]))
    assert not free.blocked
    assert [item.action for item in free.items] == [Action.APPLY, Action.APPLY]

    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.BLOCKED
    assert {r["change_id"]: r["result"] for r in run.results} == {
        f"before-{unique}": "BLOCKED",
        f"started-{unique}": "BLOCKED",
        f"after-{unique}": "BLOCKED",
        f"table-{unique}": "APPLIED",
        f"note-{unique}": "APPLIED",
    }
    assert journal.count(change=f"note-{unique}") == 1
    assert journal.count(change=f"before-{unique}") == 0
    assert entries_of(f"before-{unique}") == [] and entries_of(f"after-{unique}") == []
    assert entries_of(f"started-{unique}") == [("change.started", S.STARTED)]


@pytest.mark.django_db(transaction=True)
def test_change_for_other_environments_is_not_applicable_and_never_recorded(make_pipeline, unique, journal, settings):
    settings.FLAMINGOCK_ENVIRONMENT = "dev"
    make_pipeline(
        {
            "main": {
                "0001_prod_only.py": change_source(f"prod-{unique}", "journal", environments=["prod"]),
                "0002_dev_too.py": change_source(f"dev-{unique}", "journal", environments=["dev", "staging"]),
            }
        }
    )
    plan = services.pipeline_plan()
    assert plan.item(f"prod-{unique}").action == Action.NOT_APPLICABLE
    assert plan.item(f"prod-{unique}").reason == "runs only in prod"
    assert plan.item(f"dev-{unique}").action == Action.APPLY

    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert [r["result"] for r in run.results] == ["NOT_APPLICABLE", "APPLIED"]
    assert journal.count(change=f"prod-{unique}") == 0
    assert not AuditEntry.objects.filter(change_id=f"prod-{unique}").exists()
    assert services.pipeline_plan().item(f"prod-{unique}").action == Action.NOT_APPLICABLE


def _out_of_order_pipeline(make_pipeline, unique):
    """0002 applied; then 0001 (new, ordered before it) and 0003 (new) appear."""
    files = {"0002_applied.py": change_source(f"applied-{unique}", "journal")}
    state_record(make_pipeline({"main": files}).by_id[f"applied-{unique}"], S.APPLIED)
    files |= {
        "0001_late.py": change_source(f"late-{unique}", "journal"),
        "0003_next.py": change_source(f"next-{unique}", "journal"),
    }
    make_pipeline({"main": files})
    return services.pipeline_plan()


def test_new_change_ordered_before_an_applied_one_blocks_its_stage_by_default(make_pipeline, unique, settings):
    settings.FLAMINGOCK_OUT_OF_ORDER = "block"
    plan = _out_of_order_pipeline(make_pipeline, unique)
    late = plan.item(f"late-{unique}")
    assert (late.action, late.reason) == (Action.OUT_OF_ORDER, "ordered before the applied change at 0002")
    assert plan.stages[0].blocked_by is late
    assert plan.item(f"applied-{unique}").action == Action.SKIP
    assert plan.item(f"next-{unique}").action == Action.BLOCKED


def test_new_change_ordered_before_an_applied_one_is_applied_when_allowed(make_pipeline, unique, settings):
    settings.FLAMINGOCK_OUT_OF_ORDER = "allow"
    plan = _out_of_order_pipeline(make_pipeline, unique)
    late = plan.item(f"late-{unique}")
    assert late.action == Action.APPLY
    assert "allowed by FLAMINGOCK_OUT_OF_ORDER" in late.reason
    assert not plan.stages[0].blocked
    assert plan.item(f"next-{unique}").action == Action.APPLY


@pytest.mark.django_db(transaction=True)
def test_out_of_order_change_blocks_a_real_run_of_its_stage(make_pipeline, unique, settings, journal):
    settings.FLAMINGOCK_OUT_OF_ORDER = "block"
    _out_of_order_pipeline(make_pipeline, unique)
    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.BLOCKED
    assert journal.entries() == []
    assert entries_of(f"late-{unique}") == [] and entries_of(f"next-{unique}") == []


@pytest.mark.django_db(transaction=True)
def test_edit_of_an_applied_change_blocks_its_stage_as_checksum_drift(make_pipeline, unique, journal):
    files = {"0001_table.py": change_source(f"table-{unique}", "app-db")}
    make_pipeline({"main": files})
    assert services.run_start(actor=cli_actor(), source=Run.Source.CLI).status == Run.Status.SUCCEEDED
    recorded = AuditEntry.objects.get(change_id=f"table-{unique}", state=S.APPLIED).checksum

    files["0001_table.py"] += "    # edited after it was applied\n"
    files["0002_next.py"] = change_source(f"next-{unique}", "journal")
    pipeline = make_pipeline({"main": files})
    assert pipeline.by_id[f"table-{unique}"].checksum != recorded

    plan = services.pipeline_plan()
    drifted = plan.item(f"table-{unique}")
    assert drifted.action == Action.MANUAL_INTERVENTION
    assert drifted.reason.startswith("checksum drift")
    assert drifted.recorded_checksum == recorded
    assert plan.stages[0].blocked_by is drifted
    assert plan.item(f"next-{unique}").action == Action.BLOCKED

    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.BLOCKED
    assert journal.count(change=f"next-{unique}") == 0


def test_applied_change_removed_from_code_is_reported_missing(make_pipeline, unique):
    files = {
        "0001_kept.py": change_source(f"kept-{unique}", "journal"),
        "0002_gone.py": change_source(f"gone-{unique}", "journal"),
    }
    pipeline = make_pipeline({"main": files})
    for change in pipeline.by_id.values():
        state_record(change, S.APPLIED)
    del files["0002_gone.py"]
    make_pipeline({"main": files}, replace=True)

    plan = services.pipeline_plan()
    assert [(row.change_id, row.state, row.stage) for row in plan.missing] == [(f"gone-{unique}", S.APPLIED, "main")]
    assert plan.item(f"gone-{unique}") is None
    assert plan.as_dict()["missing_from_code"] == [{"id": f"gone-{unique}", "stage": "main", "state": S.APPLIED}]


def test_change_awaiting_approval_holds_the_rest_of_its_stage(make_pipeline, unique, settings):
    pipeline = make_pipeline(
        {
            "main": {
                "0001_first.py": change_source(f"first-{unique}", "journal"),
                "0002_gated.py": change_source(f"gated-{unique}", "app-db"),
                "0003_last.py": change_source(f"last-{unique}", "journal"),
            },
            "other": {"0001_free.py": change_source(f"free-{unique}", "journal")},
        }
    )
    asked = []

    def approval_needed(change):
        asked.append(change.id)
        return "needs 1 approval on app-db in dev" if change.target == "app-db" else ""

    plan = plan_build(
        pipeline=pipeline,
        states=change_states(),
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        strategies=engine.strategies_for(pipeline, target_systems()),
        approval_needed=approval_needed,
    )
    assert [(item.change.id, item.action) for item in plan.items] == [
        (f"first-{unique}", Action.APPLY),
        (f"gated-{unique}", Action.AWAITING_APPROVAL),
        (f"last-{unique}", Action.BLOCKED),
        (f"free-{unique}", Action.APPLY),
    ]
    assert plan.item(f"gated-{unique}").reason == "needs 1 approval on app-db in dev"
    assert plan.item(f"last-{unique}").reason == f"waits for gated-{unique}, which awaits approval"
    assert not plan.stages[0].blocked
    # Changes after the gate are held by order, not asked about.
    assert f"last-{unique}" not in asked
