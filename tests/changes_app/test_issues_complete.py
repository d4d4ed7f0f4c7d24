"""Issues lists every change that needs a human (docs/semantics.md §4; issue 20, finding 4).

Table-driven over the resolver's next actions that hold a stage: MANUAL_INTERVENTION (each way a
change gets there), OUT_OF_ORDER, and a RECONCILE that the last run could not settle (a verify
probe that found no effect, a marker target that could not be reached). For each, after a run:
the run reports the change BLOCKED, and the change is in the plan's issues, in ``issues --json``,
in ``issues get``, on the admin dashboard, on the admin's Issues page and in the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.urls import reverse

from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.plan import HOLDING, Action
from changes_app.targets.base import target_systems_reset
from tests.support.ledger import change_source, state_record
from tests.support.trails import cli, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Case:
    name: str
    #: The next action that holds the stage once ``arrange`` has run.
    action: Action
    #: (change id, the files of the stage, then what puts the change in its state).
    arrange: Callable


def _journal_in(state: str, *, verify: bool = False):
    def arrange(change_id, unique, monkeypatch):
        files = {"0001_c.py": change_source(change_id, "journal", verify=verify)}
        return files, lambda pipeline: state_record(pipeline.by_id[change_id], state)

    return arrange


def _drifted(change_id, unique, monkeypatch):
    files = {"0001_c.py": change_source(change_id, "journal")}
    return files, lambda pipeline: state_record(pipeline.by_id[change_id], S.APPLIED, checksum="0" * 64)


def _out_of_order(change_id, unique, monkeypatch):
    applied = f"{change_id}-later"
    files = {"0001_c.py": change_source(change_id, "journal"), "0002_later.py": change_source(applied, "journal")}
    return files, lambda pipeline: state_record(pipeline.by_id[applied], S.APPLIED)


def _marker_unreachable(change_id, unique, monkeypatch):
    files = {"0001_c.py": change_source(change_id, "ext-pg")}

    def put(pipeline):
        state_record(pipeline.by_id[change_id], S.STARTED)
        monkeypatch.setenv("FLAMINGOCK_TEST_TARGET_DSN", "postgresql://postgres@127.0.0.1:1/nowhere")
        target_systems_reset()

    return files, put


CASES = [
    Case("started-non-transactional", Action.MANUAL_INTERVENTION, _journal_in(S.STARTED)),
    Case("failed-non-transactional", Action.MANUAL_INTERVENTION, _journal_in(S.FAILED)),
    Case("rollback-started", Action.MANUAL_INTERVENTION, _journal_in(S.ROLLBACK_STARTED)),
    Case("rollback-failed", Action.MANUAL_INTERVENTION, _journal_in(S.ROLLBACK_FAILED)),
    Case("checksum-drift", Action.MANUAL_INTERVENTION, _drifted),
    Case("out-of-order", Action.OUT_OF_ORDER, _out_of_order),
    # The finding: STARTED, a verify probe, no effect: RECONCILE in the plan, BLOCKED in the run.
    Case("verify-found-no-effect", Action.RECONCILE, _journal_in(S.STARTED, verify=True)),
    Case("marker-target-unreachable", Action.RECONCILE, _marker_unreachable),
]


def test_the_table_covers_every_next_action_that_holds_a_stage():
    assert {case.action for case in CASES} == {*HOLDING, Action.RECONCILE}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_every_change_that_holds_its_stage_is_an_issue_everywhere(case, make_pipeline, unique, monkeypatch, journal, admin_client):
    change_id = f"bounds-{case.name}-{unique}"
    files, put = case.arrange(change_id, unique, monkeypatch)
    put(make_pipeline({"main": files}))
    pipeline_load(reload=True)

    run = run_pipeline()
    results = {row["change_id"]: row for row in run.results}
    assert results[change_id]["result"] == "BLOCKED", results[change_id]
    assert run.status == "BLOCKED", (run.status, run.status_reason)
    plan = services.pipeline_plan()
    assert plan.item(change_id).action == case.action

    # The plan's issues: the one list every surface shows.
    assert [item.change.id for item in plan.issues] == [change_id]
    # issues --json, and issues get.
    listed = cli("issues", "--json")
    assert listed.code == 0 and [issue["id"] for issue in listed.json()] == [change_id], listed.out
    got = cli("issues", "get", change_id, "--json")
    assert got.code == 0, got.err
    details = got.json()
    assert details["guidance"] and details["reason"]
    if case.action == Action.RECONCILE:
        # The reason is the run's: why reconciliation could not settle it.
        assert details["reason"] == results[change_id]["reason"]
        assert details["reason"].startswith(("needs a human: ", "cannot reconcile: "))
        assert "could not settle" in details["guidance"][0]
    # The dashboard, the admin's Issues page, the API.
    dashboard = admin_client.get(reverse("admin:index")).content.decode()
    assert change_id in dashboard.split('id="flk-issues"')[1].split('id="flk-awaiting"')[0]
    issues_page = admin_client.get(reverse("admin:changes_app_changerecord_issues")).content.decode()
    assert change_id in issues_page
    api = admin_client.get(reverse("api:issue-list"))
    assert api.status_code == 200 and [issue["id"] for issue in json.loads(api.content)] == [change_id]
    assert admin_client.get(reverse("api:issue-detail", args=[change_id])).status_code == 200


def test_a_reconcile_no_run_has_tried_is_not_an_issue_and_one_settled_later_leaves_the_list(make_pipeline, unique, journal):
    change_id = f"bounds-settles-{unique}"
    pipeline = make_pipeline({"main": {"0001_c.py": change_source(change_id, "journal", verify=True)}})
    state_record(pipeline.by_id[change_id], S.STARTED)
    # Nothing tried yet: the next run may well settle it, so nobody is asked.
    assert services.pipeline_plan().item(change_id).action == Action.RECONCILE
    assert services.pipeline_plan().issues == []
    assert run_pipeline().status == "BLOCKED"
    assert [item.change.id for item in services.pipeline_plan().issues] == [change_id]
    # The effect turns up (someone finished it by hand): the next run reconciles it, and the issue goes.
    journal.write(change=change_id)
    assert run_pipeline().status == "SUCCEEDED"
    assert services.pipeline_plan().issues == []
    assert cli("issues", "--json").json() == []
