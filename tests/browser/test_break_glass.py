"""Break-glass in real Chromium with a real Celery worker (docs/break-glass.md): the on-call engineer
undoes a change from the Emergency form of its action page, without prior approval; the review it
opens cannot be decided by them and is approved by two others; a later use whose review is late
shows OVERDUE on the dashboard and on the review's page. Screenshots go to
docs/screenshots/break-glass-*.png."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.roles import APPROVER, ENGINEER
from changes_app.models import ChangeRequest, Run, TargetSystem
from tests.browser import test_journeys as journeys
from tests.browser.test_accessibility import check, signed_in
from tests.browser.test_journeys import login, own_connections, shot
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline
from tests.support.workers import wait_for

browser, environment, worker = journeys.browser, journeys.environment, journeys.worker

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status


def emergency_from_the_action_page(page, live_server, kind: str, change: str, incident: str, reason: str, screenshot: str = "") -> None:
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_act", args=[kind, change]))
    box = page.inner_text("#flk-emergency")
    assert "Emergency (break-glass)" in box and "without the approvals the policy requires" in box, box
    page.fill("#flk-emergency-incident", incident)
    page.fill("#flk-emergency-reason", reason)
    if screenshot:
        shot(page, screenshot)
    page.click("#flk-break-glass")


def approve(page, live_server, review: ChangeRequest, comment: str) -> None:
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[review.pk]))
    page.fill("#flk-decision-comment", comment)
    page.click("#flk-approve-box summary")
    page.click("#flk-approve")
    page.wait_for_selector("text=your approval is recorded")


@own_connections
def test_an_emergency_undo_is_reviewed_by_two_others_and_a_late_review_shows_overdue(
    browser, live_server, make_pipeline, unique, environment, worker, journal
):
    change = f"note-{unique}"
    make_pipeline({"notes": {"0001_note.py": journal_change(change, rollback="ok")}})
    oncall = person("oncall", ENGINEER, APPROVER, operate=("journal",), approve=("journal",))
    assign_perm("changes_app.break_glass", oncall.user, TargetSystem.objects.get(name="journal"))
    alice = person("alice", APPROVER, approve=("journal",))
    bob = person("bob", APPROVER, approve=("journal",))
    engineer = person("engineer", ENGINEER, operate=("journal",))
    assert run_pipeline(actor=engineer.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("journal", environment, 1)
    worker = worker()

    # An engineer without the permission is not offered the Emergency form.
    page = login(browser, live_server, engineer.user)
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_act", args=["UNDO", change]))
    page.wait_for_selector("#flk-action")
    assert page.locator("#flk-emergency").count() == 0

    # The on-call engineer undoes it now, with the incident and a reason.
    page = login(browser, live_server, oncall.user)
    emergency_from_the_action_page(page, live_server, "UNDO", change, "INC-4711", "notes break checkout", "break-glass-1-emergency-form")
    page.wait_for_function(
        "document.getElementById('flk-status') && document.getElementById('flk-status').dataset.status === 'SUCCEEDED'", timeout=60_000
    )
    shot(page, "break-glass-2-undone")
    used = ChangeRequest.objects.get(break_glass=True, kind=Kind.UNDO)
    assert (used.status, used.run.status) == (Status.EXECUTED, Run.Status.SUCCEEDED), worker.log[-3000:]
    assert [e["op"] for e in journal.entries()] == ["apply", "rollback"]
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)
    entry = AuditEntry.objects.get(event="break_glass.used")
    assert (entry.details["incident"], entry.details["run_id"], entry.details["review_request_id"]) == ("INC-4711", str(used.run_id), review.pk)

    # They may not review their own use.
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[review.pk]))
    assert "nobody decides their own request" in page.inner_text("#flk-why-not")
    assert "INC-4711" in page.inner_text("#flk-break-glass")

    # Two others approve it, in time; the dashboard lists it until then.
    page = login(browser, live_server, alice.user)
    assert f"#{review.pk} {change}" in page.inner_text("#flk-reviews")
    assert "OVERDUE" not in page.inner_text("#flk-reviews")
    shot(page, "break-glass-3-dashboard-open-review")
    approve(page, live_server, review, "the outage justified it")
    review.refresh_from_db()
    assert review.status == Status.PENDING
    page = login(browser, live_server, bob.user)
    approve(page, live_server, review, "agreed")
    shot(page, "break-glass-4-review-approved")
    review.refresh_from_db()
    assert review.status == Status.APPROVED
    assert list(
        AuditEntry.objects.filter(event="request.approved", details__request_id=review.pk).order_by("id").values_list("actor", flat=True)
    ) == ["alice", "bob"]

    # A second use (re-applying it) whose review is late shows OVERDUE.
    page = login(browser, live_server, oncall.user)
    emergency_from_the_action_page(page, live_server, "REAPPLY", change, "INC-4712", "checkout fixed, notes back")
    late = None

    def opened() -> bool:
        nonlocal late
        late = ChangeRequest.objects.filter(kind=Kind.REVIEW, incident="INC-4712").first()
        return late is not None

    wait_for(opened, timeout=60, what="the second review")
    ChangeRequest.objects.filter(pk=late.pk).update(due_at=timezone.now() - timedelta(minutes=5))
    assert services.reviews_overdue() == [late.pk]
    page = login(browser, live_server, alice.user)
    overdue = page.inner_text("#flk-reviews")
    assert f"#{late.pk} {change}" in overdue and "OVERDUE" in overdue, overdue
    shot(page, "break-glass-5-dashboard-overdue")
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[late.pk]))
    assert "OVERDUE" in page.inner_text("#flk-review-due")
    assert AuditEntry.objects.filter(event="review.overdue", details__review_request_id=late.pk).count() == 1


@own_connections
def test_the_break_glass_pages_have_no_serious_violation_and_fit_1440_and_390_px(browser, live_server, make_pipeline, unique, environment):
    change = f"a-long-change-identifier-that-must-wrap-on-a-phone-{unique}"
    make_pipeline({"notes": {"0001_note.py": journal_change(change, rollback="ok")}})
    oncall = person("oncall", ENGINEER, operate=("journal",))
    assign_perm("changes_app.break_glass", oncall.user, TargetSystem.objects.get(name="journal"))
    assert run_pipeline(actor=oncall.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("journal", environment, 1)
    services.request_submit(
        kind=Kind.UNDO,
        change_id=change,
        actor=oncall.actor,
        reason="",
        source=Run.Source.UI,
        break_glass=services.break_glass_of(reason="the notes page is down", incident="INC-4711"),
    )
    late = ChangeRequest.objects.get(kind=Kind.REVIEW)
    ChangeRequest.objects.filter(pk=late.pk).update(due_at=timezone.now() - timedelta(minutes=5))
    services.reviews_overdue()

    page = signed_in(browser, live_server, oncall.user)
    axe, problems = Axe(), {}
    for url in (
        reverse("admin:changes_app_changerecord_act", args=["REAPPLY", change]),
        reverse("admin:index"),
        reverse("admin:changes_app_changerequest_change", args=[late.pk]),
    ):
        check(page, axe, live_server.url + url, problems)
    assert page.locator("#flk-review-due").count() == 1
    assert not problems, problems
