"""Break-glass in real Chromium with a real Celery worker (docs/break-glass.md): the on-call engineer
undoes a change from the Emergency form of its action page, without prior approval; the review it
opens cannot be decided by them and is approved by two others; the compliance officer's evidence
pack, made by the worker from the "Evidence" page and downloaded, shows the emergency change as
reviewed; a later use whose review window runs out shows OVERDUE on the dashboard and on the
review's page, and the next pack shows it as an exception (docs/compliance.md, "The break-glass
journey"). Each pack verifies offline. Screenshots go to docs/screenshots/break-glass-*.png."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry
from audit_app.signing import public_key_hex, signing_key
from changes_app import services
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER
from changes_app.models import ChangeRequest, EvidencePack, Run, TargetSystem
from changes_app.services.evidence import evidence_generate, evidence_request
from tests.browser import test_journeys as journeys
from tests.browser.test_accessibility import check, signed_in
from tests.browser.test_journeys import login, own_connections, shot
from tests.conftest import REPO
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline
from tests.support.workers import wait_for

browser, environment, worker = journeys.browser, journeys.environment, journeys.worker

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status

#: The audit signing key of the test's processes (the live server and the worker): the packs are
#: verified with its public key alone.
KEY = base64.b64encode(bytes(range(7, 39))).decode()
EMERGENCY = "emergency_reviewed_in_time"


def emergency_from_the_action_page(page, live_server, kind: str, change: str, incident: str, reason: str, screenshot: str = "") -> None:
    page.goto(live_server.url + reverse("admin:changes_app_changerecord_act", args=[kind, change]))
    box = page.inner_text("#flk-emergency")
    assert "Emergency (break-glass)" in box and "without the approvals the policy requires" in box, box
    page.fill("#flk-emergency-incident", incident)
    page.fill("#flk-emergency-reason", reason)
    if screenshot:
        shot(page, screenshot)
    page.click("#flk-break-glass")


def evidence_pack(page, live_server, worker, target: str, into: Path, screenshot: str) -> tuple[EvidencePack, Path]:
    """Ask for the pack of yesterday to tomorrow (UTC) for ``target`` from the "Evidence" page, wait
    for the worker to finish it (the page refreshes itself), and download it."""
    today = timezone.now().date()
    page.goto(live_server.url + reverse("admin:changes_app_evidencepack_add"))
    page.fill("#id_period_from", f"{today - timedelta(days=1):%Y-%m-%d}")
    page.fill("#id_period_to", f"{today + timedelta(days=1):%Y-%m-%d}")
    page.select_option("#id_targets", target)
    page.click("#flk-evidence-submit")
    page.wait_for_selector("#flk-evidence-pack")
    pack = EvidencePack.objects.latest("id")
    try:
        page.wait_for_selector("#flk-evidence-pack[data-status=DONE], #flk-evidence-pack[data-status=FAILED]", timeout=120_000)
    finally:
        pack.refresh_from_db()
    assert (pack.status, pack.requested_by, pack.targets) == (EvidencePack.Status.DONE, "carla", [target]), f"{pack.error}\n{worker.log[-3000:]}"
    shot(page, screenshot)
    with page.expect_download() as downloading:
        page.click("#flk-evidence-download")
    path = into / downloading.value.suggested_filename
    downloading.value.save_as(path)
    return pack, path


def pack_read(path: Path) -> tuple[dict, list[dict], list[dict]]:
    """The controls (by id), the audit entries and the rows of changes.csv of a downloaded pack."""
    with zipfile.ZipFile(path) as pack:
        controls = {control["id"]: control for control in json.loads(pack.read("controls.json"))["controls"]}
        entries = [json.loads(line) for line in pack.read("audit.jsonl").decode().splitlines() if line.strip()]
        changes = list(csv.DictReader(io.StringIO(pack.read("changes.csv").decode())))
    return controls, entries, changes


def verified_offline(path: Path, *, command_line: bool = False) -> None:
    """The pack verifies with the public key alone: by ``python -m audit_app.evidence.offline`` with
    no settings and no database in its environment, or (``command_line``) by ``manage.py flamingock
    audit verify-pack FILE --public-key HEX --offline``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO", "DATABASE", "FLAMINGOCK"))}
    public = public_key_hex(signing_key())
    command = ["-m", "audit_app.evidence.offline"] if not command_line else ["manage.py", "flamingock", "audit", "verify-pack"]
    checked = subprocess.run(
        [sys.executable, *command, str(path), "--public-key", public, "--offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "the pack is verified" in checked.stdout, checked.stdout[-3000:]


def approve(page, live_server, review: ChangeRequest, comment: str) -> None:
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[review.pk]))
    page.fill("#flk-decision-comment", comment)
    page.click("#flk-approve-box summary")
    page.click("#flk-approve")
    page.wait_for_selector("text=your approval is recorded")


@own_connections
def test_an_emergency_undo_is_reviewed_by_two_others_and_the_pack_shows_it_while_a_late_review_is_an_exception(
    browser, live_server, make_pipeline, unique, environment, worker, journal, settings, monkeypatch, tmp_path
):
    change = f"note-{unique}"
    make_pipeline({"notes": {"0001_note.py": journal_change(change, rollback="ok")}})
    oncall = person("oncall", ENGINEER, APPROVER, operate=("journal",), approve=("journal",))
    assign_perm("changes_app.break_glass", oncall.user, TargetSystem.objects.get(name="journal"))
    alice = person("alice", APPROVER, approve=("journal",))
    bob = person("bob", APPROVER, approve=("journal",))
    engineer = person("engineer", ENGINEER, operate=("journal",))
    officer = person("carla", COMPLIANCE_OFFICER)
    assert run_pipeline(actor=engineer.actor).status == Run.Status.SUCCEEDED
    services.catalogue_sync()
    policy("journal", environment, 1)
    # The live server and the worker sign with one key and share the packs' directory.
    monkeypatch.setenv("FLAMINGOCK_AUDIT_SIGNING_KEY", KEY)
    monkeypatch.setenv("FLAMINGOCK_EVIDENCE_DIR", str(tmp_path / "evidence"))
    settings.FLAMINGOCK_EVIDENCE_DIR = tmp_path / "evidence"
    downloads = tmp_path / "downloaded"
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

    # The compliance officer's pack for the period shows the emergency change as reviewed in time.
    officer_page = login(browser, live_server, officer.user)
    pack, path = evidence_pack(officer_page, live_server, worker, "journal", downloads, "break-glass-5-evidence-pack-reviewed")
    controls, entries, changes = pack_read(path)
    used_entry = next(e for e in entries if e["record"] == "entry" and e["event"] == "break_glass.used")
    assert (used_entry["seq"], used_entry["details"]["incident"], used_entry["details"]["review_request_id"]) == (entry.seq, "INC-4711", review.pk)
    assert (controls[EMERGENCY]["result"], controls[EMERGENCY]["checked"], controls[EMERGENCY]["exceptions"]) == ("PASS", 1, [])
    assert entry.seq in controls[EMERGENCY]["entries"]
    undone = [row for row in changes if row["run_id"] == str(used.run_id)]
    assert [(row["change_id"], row["result"], row["separation_of_duties"]) for row in undone] == [(change, "ROLLED_BACK", "BREAK_GLASS")]
    assert pack.results[EMERGENCY] == "PASS"
    assert "PASS" in officer_page.inner_text(f"#flk-control-{EMERGENCY}")
    verified_offline(path)

    # A second use (re-applying it) with the review window set to two seconds: it runs out.
    settings.FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS = 2 / 3600
    page = login(browser, live_server, oncall.user)
    emergency_from_the_action_page(page, live_server, "REAPPLY", change, "INC-4712", "checkout fixed, notes back")
    late = None

    def opened() -> bool:
        nonlocal late
        late = ChangeRequest.objects.filter(kind=Kind.REVIEW, incident="INC-4712").first()
        return late is not None

    wait_for(opened, timeout=60, what="the second review")
    time.sleep(max(0.0, (late.due_at - timezone.now()).total_seconds()) + 0.1)
    assert services.reviews_overdue() == [late.pk]
    page = login(browser, live_server, alice.user)
    overdue = page.inner_text("#flk-reviews")
    assert f"#{late.pk} {change}" in overdue and "OVERDUE" in overdue, overdue
    shot(page, "break-glass-6-dashboard-overdue")
    page.goto(live_server.url + reverse("admin:changes_app_changerequest_change", args=[late.pk]))
    assert "OVERDUE" in page.inner_text("#flk-review-due")
    assert AuditEntry.objects.filter(event="review.overdue", details__review_request_id=late.pk).count() == 1

    # The next pack shows the control as an exception naming that use and its change, on the page too.
    second = AuditEntry.objects.get(event="break_glass.used", details__review_request_id=late.pk)
    pack, path = evidence_pack(officer_page, live_server, worker, "journal", downloads, "break-glass-7-evidence-pack-exception")
    controls, entries, _ = pack_read(path)
    assert (controls[EMERGENCY]["result"], controls[EMERGENCY]["checked"]) == ("EXCEPTION", 2)
    assert controls[EMERGENCY]["exceptions"] == [{"seq": second.seq, "reason": f"break-glass #{second.seq} ({change}): not reviewed in time"}]
    assert {entry.seq, second.seq} <= set(controls[EMERGENCY]["entries"])
    assert pack.results[EMERGENCY] == "EXCEPTION"
    shown = officer_page.inner_text(f"#flk-control-{EMERGENCY}")
    assert "EXCEPTION" in shown and f"break-glass #{second.seq} ({change}): not reviewed in time" in shown, shown
    verified_offline(path, command_line=True)


@own_connections
def test_the_break_glass_pages_have_no_serious_violation_and_fit_1440_and_390_px(
    browser, live_server, make_pipeline, unique, environment, settings, monkeypatch, tmp_path
):
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

    # A pack showing the overdue review as an exception, made in this process as the command line does.
    monkeypatch.setenv("FLAMINGOCK_AUDIT_SIGNING_KEY", KEY)
    settings.FLAMINGOCK_EVIDENCE_DIR = tmp_path / "evidence"
    officer = person("carla", COMPLIANCE_OFFICER)
    now = timezone.now()
    pack = evidence_request(actor=officer.actor, since=now - timedelta(days=1), until=now + timedelta(days=1), queue=False)
    pack = evidence_generate(pack_id=pack.pk)
    assert pack.results[EMERGENCY] == "EXCEPTION", pack.error

    page = signed_in(browser, live_server, oncall.user)
    axe, problems = Axe(), {}
    for url in (
        reverse("admin:changes_app_changerecord_act", args=["REAPPLY", change]),
        reverse("admin:index"),
        reverse("admin:changes_app_changerequest_change", args=[late.pk]),
    ):
        check(page, axe, live_server.url + url, problems)
    assert page.locator("#flk-review-due").count() == 1
    page = signed_in(browser, live_server, officer.user)
    check(page, axe, live_server.url + reverse("admin:changes_app_evidencepack_change", args=[pack.pk]), problems)
    assert "not reviewed in time" in page.inner_text(f"#flk-control-{EMERGENCY}")
    assert not problems, problems

    # Without its file, the page still shows the results kept on the row.
    (tmp_path / "evidence" / pack.file_path).unlink()
    page.reload()
    assert page.inner_text(f"#flk-control-{EMERGENCY}").split() == [EMERGENCY, "EXCEPTION"]
