"""The fleet view in real Chromium (docs/fleet.md, "The fleet view"): an operator goes from the
dashboard's card to a fleet run, watches its wave progress update live, filters the failed and
blocked members and reads their guidance, then cancels the run after its confirmation page. Every
page has no serious or critical axe-core violation and fits 1440 px and 390 px."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.urls import reverse

from changes_app.governance.roles import ENGINEER
from changes_app.models import FleetMemberRun, FleetRun
from tests.browser.test_accessibility import check, signed_in
from tests.browser.test_journeys import browser, environment, own_connections, shot  # noqa: F401 (fixtures)
from tests.changes_app.fleets.conftest import group_change, group_targets  # noqa: F401 (fixture)
from tests.changes_app.fleets.test_admin_fleet_view import CREATE, INDEX, mixed_fleet, state_set
from tests.support.governance import person

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@own_connections
def test_an_operator_follows_a_fleet_run_filters_its_failures_and_cancels_it(browser, live_server, group_targets, make_pipeline, environment):  # noqa: F811
    group_targets({"schemas": ["t_00"]})
    long_id = "a-long-fleet-change-identifier-that-must-wrap-or-scroll-on-a-phone"
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change(CREATE, "CREATE TABLE a (id integer)"),
                "0002_index.py": group_change(INDEX, "CREATE INDEX a_id ON a (id)"),
                "0003_long.py": group_change(long_id, "SELECT 1"),
            }
        }
    )
    operator = person("fleet-operator", ENGINEER, operate=("tenants",))
    fleet = mixed_fleet()
    state_set("t_03", CREATE, "APPLIED", checksum="0" * 64)  # edited after it was applied: a person decides
    axe, problems = Axe(), {}

    page = signed_in(browser, live_server, operator.user)
    card = page.locator("#flk-fleets")
    assert "Wave 1 of 1: 3 of 4 members finished (2 failed)" in card.inner_text()
    card.get_by_role("link", name=f"tenants ({str(fleet.pk)[:8]})").click()
    page.wait_for_selector("#flk-fleet-matrix")
    assert page.locator("tr.flk-member").count() == 5

    # Live: the running member ends; the headline follows without a reload.
    FleetMemberRun.objects.filter(fleet_run=fleet, member="t_04").update(status=FleetMemberRun.Status.SUCCEEDED)
    page.wait_for_function("() => document.getElementById('flk-fleet-headline').textContent.includes('4 of 4 members finished')", timeout=15000)

    page.select_option("#flk-filter-status", "attention")
    page.click("#flk-member-filter input[type=submit]")
    page.wait_for_selector(".flk-member-issues")
    assert [row.get_attribute("data-member") for row in page.locator("tr.flk-member").all()] == ["t_02", "t_03"]
    issues = page.locator("#flk-fleet-issues").inner_text()
    assert "relation on t_02 exploded" in issues and "was edited after it was applied" in issues
    shot(page, "fleet-1-failed-and-blocked-members")

    urls = {
        "fleet runs": reverse("admin:changes_app_fleetrun_changelist"),
        "a fleet run": reverse("admin:changes_app_fleetrun_change", args=[fleet.pk]),
        "its failed members": reverse("admin:changes_app_fleetrun_change", args=[fleet.pk]) + "?status=attention",
        "cancel": reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"]),
        "dashboard": reverse("admin:index"),
    }
    for url in urls.values():
        check(page, axe, live_server.url + url, problems)

    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(live_server.url + urls["a fleet run"])
    page.click("#flk-fleet-cancel")
    assert "What will happen" in page.locator("#flk-gate").inner_text()
    page.click("#flk-confirm")
    page.wait_for_selector("#flk-fleet-matrix")

    assert problems == {}, "\n".join(f"{url}: {found}" for url, found in problems.items())
    fleet.refresh_from_db()
    assert fleet.cancel_requested_at is not None and fleet.cancel_requested_by == "fleet-operator"
    assert FleetRun.objects.get(pk=fleet.pk).result in ("", FleetRun.Result.CANCELLED)
