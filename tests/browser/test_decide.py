"""An approver decides from the request page alone (issue 18), in real Chromium with a real Celery
worker: the statements and rollback that will run, the undo cascade, the policy and who may
decide, then Approve with its confirmation, and the run's result on the same page. The engineer's
side: the gate said before confirming, and "Run the pipeline" with its plan, a reason and a
confirmation. Screenshots go to docs/screenshots/decide-*.png (docs/admin.md, README)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from changes_app import services
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRecord, ChangeRequest, Run
from tests.browser import test_journeys as journeys
from tests.browser.test_journeys import login, own_connections, shot
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline, sql_change, table_exists
from tests.support.workers import wait_for

# The journeys' fixtures: Chromium, this test's environment and a real Celery worker.
browser, environment, worker = journeys.browser, journeys.environment, journeys.worker

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@own_connections
def test_an_approver_decides_an_undo_from_the_request_page_alone(browser, live_server, make_pipeline, unique, environment, worker, journal):
    orders, notes, table = f"orders-{unique}", f"notes-{unique}", f"dec_{unique}"
    make_pipeline(
        {
            "shop": {
                "0001_orders.yaml": sql_change(orders, f"CREATE TABLE {table} (id integer PRIMARY KEY, total_cents integer)", f"DROP TABLE {table}"),
                "0002_notes.py": journal_change(notes, rollback="ok"),
            }
        }
    )
    engineer = person("engineer", ENGINEER, operate=("app-db", "journal"))
    approver = person("approver", APPROVER, approve=("app-db", "journal"))
    person("second", APPROVER, approve=("app-db",))  # may approve app-db only: not eligible for the cascade
    assert run_pipeline(actor=engineer.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("app-db", environment, 1)
    worker = worker()

    # The engineer is told, before confirming, who must approve.
    page = login(browser, live_server, engineer.user)
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_act", args=["UNDO", orders]))
    page.fill("#id_reason", "the orders table moves to the billing database")
    page.click("#flk-continue")
    gate = page.inner_text("#flk-gate")
    assert "Needs 1 approval from: approver (Approver on app-db, journal)." in gate, gate
    shot(page, "decide-1-gate-before-confirm")
    page.click("#flk-confirm")
    page.wait_for_selector("#flk-why-not")
    assert "Approver on app-db, journal" in page.inner_text("#flk-why-not")
    assert page.locator("#flk-approve").count() == 0
    request = ChangeRequest.objects.get()

    # The approver opens the request and decides with nothing else open.
    page = login(browser, live_server, approver.user)
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[request.pk]))
    will_run = page.inner_text("#flk-will-run")
    assert f"CREATE TABLE {table}" in will_run and f"DROP TABLE {table}" in will_run
    cascade = page.inner_text("#flk-undo-cascade")
    assert cascade.index(notes) < cascade.index(orders), cascade  # newest first
    assert "Eligible approvers: approver" in page.inner_text("#flk-eligible")
    shot(page, "decide-2-request-page")
    page.fill("#flk-decision-comment", "checked with the billing team")
    page.click("#flk-approve-box summary")
    assert "Yours is the last approval needed" in page.inner_text("#flk-approve-box")
    shot(page, "decide-3-approve-confirmation")
    page.click("#flk-approve")
    page.wait_for_selector("text=your approval is recorded")

    def executed() -> bool:
        request.refresh_from_db()
        return request.status == ChangeRequest.Status.EXECUTED

    wait_for(executed, timeout=60, what="the undo to be executed")
    page.reload()
    assert "Succeeded" in page.inner_text("#flk-request-run") and "Rolled back" in page.inner_text("#flk-request-run")
    assert "approver" in page.inner_text("#flk-decisions") and "checked with the billing team" in page.inner_text("#flk-decisions")
    shot(page, "decide-4-request-executed")
    assert not table_exists(table), worker.log[-3000:]

    # The change's own page tells the story, each step linked to its audit entry.
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_change", args=[ChangeRecord.objects.get(change_id=orders).pk]))
    story = page.inner_text("#flk-story")
    assert "Approved by approver" in story and "Rolled back" in story
    assert page.locator("#flk-story a[href*='/audit_app/auditentry/']").count() >= 4
    shot(page, "decide-5-change-story")


@own_connections
def test_an_engineer_runs_the_pipeline_from_its_plan_with_a_reason(browser, live_server, make_pipeline, unique, environment, worker, journal):
    make_pipeline({"notes": {f"000{n}_n.py": journal_change(f"plan-{n}-{unique}", rollback="ok") for n in (1, 2)}})
    engineer = person("engineer", ENGINEER, operate=("journal",))
    services.catalogue_sync()
    worker = worker()

    page = login(browser, live_server, engineer.user)
    page.goto(live_server.url + reverse("admin:changes_app_run_changelist"))
    page.click("#flk-run-pipeline")
    page.wait_for_selector("#flk-plan")
    assert page.locator("#flk-plan tr[data-action='APPLY']").count() == 2
    assert "This run would act on 2 changes." in page.inner_text("#flk-plan-summary")
    page.fill("#id_reason", "release 2026.12")
    page.click("#flk-run-continue")
    shot(page, "decide-0-run-plan")
    page.click("#flk-run-confirm")
    page.wait_for_function(
        "document.getElementById('flk-status') && document.getElementById('flk-status').dataset.status === 'SUCCEEDED'", timeout=60_000
    )
    assert "2 of 2 changes" in page.inner_text("#flk-count")
    run = Run.objects.get()
    assert (run.reason, run.status) == ("release 2026.12", Run.Status.SUCCEEDED), worker.log[-3000:]
