"""The admin in real Chromium (Debian's /usr/bin/chromium, driven by Playwright): the three daily
journeys of docs/admin.md, with runs executed by a real Celery worker process. Screenshots of each
journey are saved under docs/screenshots/ (listed in docs/admin.md)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from django.db import connections
from django.urls import reverse

from changes_app import services
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER
from changes_app.models import ChangeRequest, Run
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline
from tests.support.workers import Broker, Worker, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"
PASSWORD = "journey-pass-1"


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (bin/test does it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


def own_connections(test):
    """Close the test body's database connections before and after it.

    Under Playwright's sync API the test body runs in a context of its own, so its connection is
    not the one the fixtures close when the database is re-created from its template between
    tests; left open, the next test would use a connection the re-creation terminated.
    """

    @functools.wraps(test)
    def wrapped(*args, **kwargs):
        connections.close_all()
        try:
            return test(*args, **kwargs)
        finally:
            connections.close_all()

    return wrapped


@pytest.fixture
def environment(settings, unique):
    settings.FLAMINGOCK_ENVIRONMENT = f"b-{unique}"
    return settings.FLAMINGOCK_ENVIRONMENT


@pytest.fixture
def worker(environment, unique, settings, subprocess_env, tmp_path):
    """Start a real ``celery worker`` on this test's Redis key space (once the test wrote its
    pipeline: the worker loads it at start); the live server publishes there."""
    broker = Broker(unique)
    settings.REDIS_URL = broker.url
    started: list[Worker] = []
    publishing = broker.publishing()

    def start() -> Worker:
        process = Worker(f"browser@{unique}", env=subprocess_env(**broker.env(), FLAMINGOCK_ENVIRONMENT=environment), log_dir=tmp_path / "workers")
        started.append(process.start())
        wait_for(lambda: process.ready, timeout=60, what="the worker")
        publishing.__enter__()
        return process

    try:
        yield start
    finally:
        if started:
            publishing.__exit__(None, None, None)
        for process in started:
            process.stop()
        broker.cleanup(f"pipeline:{environment}")


def login(browser, live_server, user):
    user.set_password(PASSWORD)
    user.save()
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(live_server.url + reverse("admin:login"))
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#flk-dashboard")
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def slow_notes(unique: str, count: int = 5) -> dict[str, str]:
    return {
        f"{n:04d}_note.py": journal_change(f"note-{n}-{unique}", rollback="ok", imports="import time", apply_extra="time.sleep(0.6)")
        for n in range(1, count + 1)
    }


@own_connections
def test_engineer_triggers_a_run_and_watches_its_progress_to_the_end(browser, live_server, make_pipeline, unique, environment, worker, journal):
    make_pipeline({"notes": slow_notes(unique)})
    worker = worker()
    engineer = person("engineer", ENGINEER, operate=("journal", "app-db"))
    page = login(browser, live_server, engineer.user)
    shot(page, "engineer-1-dashboard")

    page.goto(live_server.url + reverse("admin:changes_app_run_changelist"))
    page.click("#flk-run-pipeline")
    page.wait_for_selector("#flk-plan")
    page.fill("#id_reason", "release notes 5")
    page.click("#flk-run-continue")
    page.click("#flk-run-confirm")
    page.wait_for_selector("#flk-progress")
    page.wait_for_function("document.getElementById('flk-status').dataset.status === 'RUNNING'", timeout=30_000)
    page.wait_for_function("parseInt(document.getElementById('flk-bar').style.width) > 0", timeout=30_000)
    shot(page, "engineer-2-run-in-progress")
    seen_running = page.inner_text("#flk-count")

    page.wait_for_function(
        "document.getElementById('flk-status') && document.getElementById('flk-status').dataset.status === 'SUCCEEDED'", timeout=60_000
    )
    page.wait_for_selector(".flk-result")
    shot(page, "engineer-3-run-finished")

    run = Run.objects.get()
    assert (run.status, run.actor, run.source, run.progress_done) == (Run.Status.SUCCEEDED, "engineer", Run.Source.UI, 5), worker.log[-3000:]
    assert re.fullmatch(r"[0-4] of 5 changes", seen_running)
    assert page.locator(".flk-result").count() == 5 and "Applied" in page.inner_text("#flk-results")
    assert [e["op"] for e in journal.entries()] == ["apply"] * 5


@own_connections
def test_approver_approves_an_undo_requested_by_an_engineer_and_sees_it_executed(
    browser, live_server, make_pipeline, unique, environment, worker, journal
):
    make_pipeline({"notes": {"0001_note.py": journal_change(f"note-{unique}", rollback="ok")}})
    engineer = person("engineer", ENGINEER, operate=("journal",))
    approver = person("approver", APPROVER, approve=("journal",))
    assert run_pipeline(actor=engineer.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("journal", environment, 1)
    worker = worker()

    page = login(browser, live_server, engineer.user)
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_changelist"))
    page.click(f"text=note-{unique}")
    page.click("a.flk-action:has-text('Undo')")
    page.fill("#id_reason", "the release notes were wrong")
    page.click("#flk-continue")
    page.wait_for_selector("#flk-cascade")
    shot(page, "approval-1-undo-confirmation")
    page.click("#flk-confirm")
    page.wait_for_selector("text=awaits 1 approval")
    shot(page, "approval-2-request-pending")
    request = ChangeRequest.objects.get()
    assert (request.status, request.requester_name) == (ChangeRequest.Status.PENDING, "engineer")

    page = login(browser, live_server, approver.user)
    assert f"#{request.pk} Undo note-{unique}" in page.inner_text("#flk-awaiting")
    page.click(f"#flk-awaiting a:has-text('#{request.pk}')")
    page.fill("#flk-decision-comment", "agreed")
    page.click("#flk-approve-box summary")
    shot(page, "approval-3-approver-decides")
    page.click("#flk-approve")
    page.wait_for_selector("text=your approval is recorded")
    page.click(f"a[href*='{ChangeRequest.objects.get().run_id}']")
    page.wait_for_function(
        "document.getElementById('flk-status') && document.getElementById('flk-status').dataset.status === 'SUCCEEDED'", timeout=60_000
    )
    shot(page, "approval-4-undo-executed")

    request.refresh_from_db()
    assert (request.status, request.run.status, request.run.kind) == (ChangeRequest.Status.EXECUTED, Run.Status.SUCCEEDED, Run.Kind.UNDO), worker.log[
        -3000:
    ]
    assert [e["op"] for e in journal.entries()] == ["apply", "rollback"]


@own_connections
def test_compliance_officer_browses_the_audit_of_a_change_and_finds_no_button_that_acts(browser, live_server, make_pipeline, unique, environment):
    change = f"note-{unique}"
    make_pipeline({"notes": {"0001_note.py": journal_change(change, rollback="ok")}})
    engineer = person("engineer", ENGINEER, operate=("journal",))
    officer = person("officer", COMPLIANCE_OFFICER)
    assert run_pipeline(actor=engineer.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()

    page = login(browser, live_server, officer.user)
    visited = []
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_changelist"))
    visited.append(page.url)
    page.click(f"text={change}")
    page.wait_for_selector(".flk-history")
    assert "Applied" in page.inner_text(".flk-history") and page.locator(".flk-history [data-event='change.applied']").count() == 1
    visited.append(page.url)
    shot(page, "compliance-1-change-history")
    page.goto(live_server.url + reverse("admin:audit_app_auditentry_changelist") + f"?q={change}")
    visited.append(page.url)
    shot(page, "compliance-2-audit-trail")
    for url in [
        reverse("admin:changes_app_run_changelist"),
        reverse("admin:changes_app_changerequest_changelist"),
        reverse("admin:changes_app_changerecord_issues"),
        reverse("admin:index"),
    ]:
        page.goto(live_server.url + url)
        visited.append(page.url)

        # Nothing that acts: no action link, no button that posts anything but the logout.
        assert page.locator("a.flk-action").count() == 0, page.url
        assert page.locator("#flk-run-pipeline, #flk-approve, #flk-reject, #flk-cancel, #flk-release, #flk-policy-form").count() == 0, page.url
        posting = page.eval_on_selector_all(
            "form[method=post] button, form[method=post] input[type=submit], form[method=POST] button, form[method=POST] input[type=submit]",
            "els => els.map(e => e.form.action)",
        )
        assert all(action.endswith(reverse("admin:logout")) for action in posting), (page.url, posting)
    assert len(visited) == 7
