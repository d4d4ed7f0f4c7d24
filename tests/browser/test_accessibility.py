"""Accessibility and layout of every page of the journeys (issue 18, "Must show"), in real Chromium:
axe-core (axe-playwright-python) finds no serious or critical violation, and no page is wider than
the viewport at 1440 px or at 390 px (docs/admin.md, "Accessibility and layout")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.urls import reverse
from django.utils import timezone

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.roles import ENGINEER, PLATFORM_ADMIN
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ChangeRecord, ChangeRequest, LockLease, Run, TargetSystem
from tests.browser.test_journeys import PASSWORD, browser, environment, own_connections, shot  # noqa: F401 (fixtures)
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WIDTHS = (1440, 390)
BLOCKING = {"serious", "critical"}


def signed_in(browser, live_server, user):  # noqa: F811
    user.set_password(PASSWORD)
    user.save()
    page = browser.new_context(viewport={"width": WIDTHS[0], "height": 900}).new_page()
    page.goto(live_server.url + reverse("admin:login"))
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#flk-dashboard")
    return page


def too_wide(page) -> int:
    """How many pixels the document reaches beyond the viewport (0 when it fits)."""
    return page.evaluate("() => Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")


def widest(page) -> list[str]:
    """The innermost elements reaching beyond the viewport, to say what overflows."""
    return page.evaluate(
        """() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && ![...e.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
            .slice(0, 5).map(e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}.${[...e.classList].join('.')} (${Math.round(e.getBoundingClientRect().right)} px)`)"""
    )


def check(page, axe, url: str, problems: dict, screenshot: tuple[str, int] | None = None) -> None:
    """Visit ``url`` at each width; record blocking axe violations (at the widest) and any overflow.
    ``screenshot`` names the page's picture in docs/screenshots/ and the width it is taken at."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        page.wait_for_load_state("load")
        if screenshot and screenshot[1] == width:
            shot(page, screenshot[0])
        if width == WIDTHS[0]:
            found = axe.run(
                page,
                options={
                    "resultTypes": ["violations"],
                    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]},
                },
            )
            blocking = [
                f"{v['id']} ({v['impact']}): {[node['target'] for node in v['nodes']][:4]}"
                for v in found.response["violations"]
                if v["impact"] in BLOCKING
            ]
            if blocking:
                problems.setdefault(url, []).extend(blocking)
        if (extra := too_wide(page)) > 0:
            problems.setdefault(url, []).append(f"{extra} px wider than the viewport at {width} px: {widest(page)}")


@own_connections
def test_every_journey_page_has_no_serious_violation_and_fits_1440_and_390_px(browser, live_server, make_pipeline, unique, environment, settings):  # noqa: F811

    change = f"a-long-change-identifier-that-must-wrap-on-a-phone-{unique}"
    make_pipeline({"notes": {"0001_note.py": journal_change(change, rollback="ok")}})
    engineer = person("engineer", ENGINEER, operate=("journal",))
    admin = person("platform", PLATFORM_ADMIN)
    run = run_pipeline(actor=engineer.actor)
    assert run.status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("journal", environment, 1)
    request = services.request_submit(
        kind=ChangeRequest.Kind.UNDO, change_id=change, actor=engineer.actor, reason="the release notes were wrong", source=Run.Source.UI
    ).request
    record = ChangeRecord.objects.get(change_id=change)
    entry = AuditEntry.objects.filter(event="change.applied").latest("id")
    target = TargetSystem.objects.get(name="journal")

    pages = {
        "dashboard": reverse("admin:index"),
        "changes": reverse("admin:changes_app_changerecord_changelist"),
        "a change": reverse("admin:changes_app_changerecord_change", args=[record.pk]),
        "runs": reverse("admin:changes_app_run_changelist"),
        "a run": reverse("admin:changes_app_run_change", args=[run.pk]),
        "requests": reverse("admin:changes_app_changerequest_changelist"),
        "a request": reverse("admin:changes_app_changerequest_change", args=[request.pk]),
        "audit": reverse("admin:audit_app_auditentry_changelist"),
        "an audit entry": reverse("admin:audit_app_auditentry_change", args=[entry.pk]),
        "issues": reverse("admin:changes_app_changerecord_issues"),
        "lock": reverse("admin:changes_app_run_lock"),
        "target systems": reverse("admin:changes_app_targetsystem_changelist"),
        "policies": reverse("admin:changes_app_targetsystem_change", args=[target.pk]),
        "permissions": reverse("admin:changes_app_targetsystem_permissions_manage_user", args=[target.pk, engineer.user.pk]),
        "404": "/admin/changes_app/no-such-page/",
    }
    # The lock held past its lease: the page's warning and its release form are checked too.
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "backend": "database"}
    LockLease.objects.update_or_create(
        name=lock_backend_shared().name,
        defaults={
            "owner": "o",
            "run_id": run.pk,
            "holder": "worker@host-1",
            "host": "host-1",
            "pid": 4242,
            "token": 1,
            "acquired_at": timezone.now() - timedelta(minutes=5),
            "expires_at": timezone.now() - timedelta(minutes=1),
        },
    )
    pictures = {
        "dashboard": ("site-1-dashboard-on-a-phone", 390),
        "lock": ("site-2-lock-past-its-lease", 1440),
        "permissions": ("site-3-permissions", 1440),
        "404": ("site-4-not-found", 1440),
    }
    axe = Axe()
    problems: dict[str, list[str]] = {}
    page = signed_in(browser, live_server, admin.user)
    for name, url in pages.items():
        check(page, axe, live_server.url + url, problems, pictures.get(name))
    # The engineer's own pages: the run plan and an action's form; then the 403 page as the
    # engineer meets it (guardian's screens are the platform admin's).
    own = signed_in(browser, live_server, engineer.user)
    for url in (reverse("admin:changes_app_run_start"), reverse("admin:changes_app_changerecord_act", args=["UNDO", change])):
        check(own, axe, live_server.url + url, problems)
    check(own, axe, live_server.url + pages["permissions"], problems)
    assert "flk-error-403" in own.content()
    # The sign-in page, before anyone signs in.
    anonymous = browser.new_context().new_page()
    check(anonymous, axe, live_server.url + reverse("admin:login"), problems)

    assert problems == {}, "\n".join(f"{url}: {found}" for url, found in problems.items())
