"""The audit trail in real Chromium (issue 18): a compliance officer clicks "Verify now", a real Celery
worker process recomputes the chain, and the page shows the result; the list fits its box at 1440 px
and marks each entry with the verification that covers it. Screenshots under docs/screenshots/."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit_app.models import AuditEntry, VerificationRequest
from changes_app.governance.roles import COMPLIANCE_OFFICER
from tests.browser.test_journeys import PASSWORD, browser, environment, own_connections, shot, worker  # noqa: F401 (fixtures)
from tests.support.audit import entry_write
from tests.support.governance import person
from tests.support.trails import journal_change

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WIDE = {"width": 1440, "height": 1000}


def login_at(browser, live_server, user, viewport):  # noqa: F811
    user.set_password(PASSWORD)
    user.save()
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(live_server.url + reverse("admin:login"))
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_load_state()
    return page


def overflow(page) -> dict:
    """How far the page and the results table reach beyond the viewport and the list's box (px)."""
    return page.evaluate(
        """() => {
            const table = document.querySelector('#result_list').getBoundingClientRect();
            const box = document.querySelector('#changelist').getBoundingClientRect();
            return {page: Math.max(0, document.documentElement.scrollWidth - window.innerWidth), table: Math.max(0, Math.round(table.right - box.right))};
        }"""
    )


@own_connections
def test_compliance_officer_verifies_the_chain_now_and_sees_the_result(browser, live_server, make_pipeline, unique, environment, worker):  # noqa: F811
    make_pipeline({"notes": {"0001_note.py": journal_change(f"note-{unique}", rollback="ok")}})
    worker = worker()
    for index in range(40):
        # A few long values that must wrap inside the list's box.
        entry_write(
            "change.applied",
            change_id=f"a-rather-long-change-identifier-{index:03d}-{unique}" if index % 10 == 0 else f"c-{index:03d}",
            target="app-db",
            details={"note": "x" * 80},
            environment=environment,
        )
    officer = person("officer", COMPLIANCE_OFFICER)

    page = login_at(browser, live_server, officer.user, WIDE)
    page.goto(live_server.url + reverse("admin:audit_app_auditentry_changelist"))
    assert "The chain has not been verified yet" in page.inner_text("#chain-status")
    assert overflow(page) == {"page": 0, "table": 0}
    page.click("#flk-verify-now")
    page.wait_for_selector("#flk-verify")
    page.wait_for_function("document.getElementById('flk-verify-status').dataset.status === 'DONE'", timeout=60_000)
    shot(page, "compliance-3-verify-now")

    request = VerificationRequest.objects.select_related("verification").get()
    assert (request.status, request.requested_by, request.verification.ok) == ("DONE", "officer", True), worker.log[-3000:]
    assert page.inner_text("#flk-verify-status") == "Done"
    assert "intact" in page.inner_text("#flk-verify-result")
    assert f"{request.entries_checked} of {request.total} entries checked" == page.inner_text("#flk-verify-count")
    assert page.locator("#flk-verify-link a").count() == 1
    asked = AuditEntry.objects.get(event="audit.verify_requested")
    verified = AuditEntry.objects.get(event="audit.verified")
    assert (asked.actor, verified.details["requested_by"], verified.details["request"]) == ("officer", "officer", request.pk)

    page.goto(live_server.url + reverse("admin:audit_app_auditentry_changelist"))
    assert "intact" in page.inner_text("#chain-status")
    assert page.locator(".flk-verified").count() >= 40
    assert overflow(page) == {"page": 0, "table": 0}
    shot(page, "compliance-4-audit-trail-verified")
