"""Deciding with the facts (issue 18, docs/admin.md): the gate said before a governed action is
confirmed, a request page an approver can decide on, running with a plan, one page per change
that tells its story, words for people, and one truth across the change page, Issues and the
dashboard."""

from __future__ import annotations

import importlib

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit_app.integrity import audit_verify, verification_record
from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app import services
from changes_app.admin import labels
from changes_app.admin.views import findings_active
from changes_app.engine.executor import Result
from changes_app.governance.policy import approvers_eligible, gate_preview
from changes_app.governance.roles import APPROVER
from changes_app.models import ApprovalPolicy, ChangeRecord, ChangeRequest, ChangeSource, ChangeSourceImmutable, Finding, Run
from changes_app.pipeline.plan import Action
from changes_app.services import requests as request_service
from tests.changes_app.api.conftest import client_for
from tests.changes_app.test_admin_pages import ENVIRONMENT, World, act_url, decide, messages_of, requested, world_build
from tests.support.governance import person, policy, snapshot
from tests.support.trails import run_pipeline, sql_change
from tests.support.workers import Broker

pytestmark = pytest.mark.django_db(transaction=True)

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status


@pytest.fixture
def world(make_pipeline, unique, settings, journal) -> World:
    return world_build(make_pipeline, unique, settings)


def section(page: str, element_id: str) -> str:
    """The HTML from the element with ``element_id`` to the end of its enclosing section (good
    enough: our sections do not nest)."""
    assert f'id="{element_id}"' in page, f"no #{element_id} on the page"
    rest = page.split(f'id="{element_id}"', 1)[1]
    for end in ("</section>", "</div>"):
        if end in rest:
            return rest.split(end, 1)[0]
    return rest


def request_page(world: World, who: str, request_id: int) -> str:
    response = world.client(who).get(reverse("admin:changes_app_changerequest_change", args=[request_id]))
    assert response.status_code == 200
    return response.content.decode()


def change_page(world: World, who: str, change_id: str) -> str:
    response = world.client(who).get(reverse("admin:changes_app_changerecord_change", args=[world.record(change_id).pk]))
    assert response.status_code == 200
    return response.content.decode()


def inline_execution(monkeypatch) -> None:
    """An approved request executes in this process (the worker path is the browser journey's)."""
    original = request_service.request_execute
    monkeypatch.setattr(request_service, "request_execute", lambda *, request_id, inline=False: original(request_id=request_id, inline=True))


# -- the gate, said before the confirm button ------------------------------------------------------


def test_undo_confirmation_says_it_runs_now_where_no_policy_governs_the_target(world):
    ApprovalPolicy.objects.all().delete()

    page = world.client("engineer").post(act_url(Kind.UNDO, world.db_change), {"reason": "bad release"}).content.decode()

    gate = section(page, "flk-gate")
    assert f"Runs now: no approval policy for app-db in {ENVIRONMENT}." in gate
    assert "Yes, undo now" in page


def test_undo_confirmation_names_who_must_approve_when_two_approvals_are_needed(world):
    policy("app-db", ENVIRONMENT, 2)
    person("alice", APPROVER, approve=("app-db",))
    person("bob", APPROVER, approve=("app-db", "journal"))
    person("carol", APPROVER, approve=("journal",))  # approves elsewhere only

    page = world.client("engineer").get(act_url(Kind.UNDO, world.db_change)).content.decode()

    assert "Needs 2 approvals from: alice, approver, bob (Approver on app-db)." in section(page, "flk-gate")
    done = world.client("engineer").post(act_url(Kind.UNDO, world.db_change), {"reason": "bad release", "confirm": "yes"})
    request = ChangeRequest.objects.get()
    assert done.status_code == 302 and request.required_approvals == 2 and request.status == Status.PENDING


def test_the_gate_preview_is_the_policy_services_own_answer_and_never_names_the_requester(world):
    boss = person("boss", superuser=True)

    assert gate_preview(targets=["app-db"], environment="nowhere").text == "Runs now: no approval policy for app-db in nowhere."
    assert gate_preview(targets=["app-db"], environment=ENVIRONMENT).required == 1
    assert approvers_eligible(targets=["app-db"], environment=ENVIRONMENT) == ["approver", "boss"]
    assert approvers_eligible(targets=["app-db"], environment=ENVIRONMENT, requester_id=boss.user.pk) == ["approver"]
    assert approvers_eligible(targets=["app-db", "no-such-target"], environment=ENVIRONMENT) == []
    policy("app-db", "qa", 0)
    assert "approves it automatically" in gate_preview(targets=["app-db"], environment="qa").text


def test_a_refused_action_shows_the_refusal_and_no_gate_or_confirm_button(world):
    page = world.client("engineer").get(act_url(Kind.UNDO, world.broken)).content.decode()

    assert 'id="flk-refusal"' in page and 'id="flk-gate"' not in page and 'id="flk-continue"' not in page


# -- the request page ----------------------------------------------------------------------------------


def test_an_approver_sees_the_statements_the_rollback_the_cascade_the_policy_and_may_decide(world):
    request = requested(world)

    page = request_page(world, "approver", request.pk)

    will_run = section(page, "flk-will-run")
    assert f"CREATE TABLE {world.db_table} (id integer)" in will_run and f"DROP TABLE {world.db_table}" in will_run
    assert world.db_change in section(page, "flk-undo-cascade")
    assert "Eligible approvers: <strong>approver</strong>" in page
    assert 'id="flk-approve"' in page and 'id="flk-reject"' in page and 'id="flk-why-not"' not in page
    assert "Yours is the last approval needed" in page


def test_the_requester_sees_no_approve_button_and_why(world):
    request = requested(world)

    page = request_page(world, "engineer", request.pk)

    assert 'id="flk-approve"' not in page and 'id="flk-reject"' not in page
    assert "deciding needs Approver on app-db" in section(page, "flk-why-not")
    assert 'id="flk-cancel"' in page


def test_a_requester_who_is_an_approver_is_told_nobody_decides_their_own_request(world):
    boss = person("boss", superuser=True)
    request = services.request_submit(kind=Kind.UNDO, change_id=world.db_change, actor=boss.actor, reason="mine", source=Run.Source.UI).request
    client = Client()
    client.force_login(boss.user)

    page = client.get(reverse("admin:changes_app_changerequest_change", args=[request.pk])).content.decode()

    assert 'id="flk-approve"' not in page
    assert "You requested it: nobody decides their own request" in section(page, "flk-why-not")
    assert "Eligible approvers: <strong>approver</strong>" in page  # not boss, the requester


def test_people_without_approve_and_decided_requests_show_why_they_cannot_be_decided(world):
    request = requested(world)
    assert "deciding needs Approver" in section(request_page(world, "compliance", request.pk), "flk-why-not")
    decide(world, "approver", request.pk, "reject", "not now")

    page = request_page(world, "approver", request.pk)

    assert 'id="flk-approve"' not in page and "This request is rejected" in section(page, "flk-why-not")
    assert "approver: <strong>Reject</strong>" in section(page, "flk-decisions") and "not now" in section(page, "flk-decisions")


def test_the_request_page_escapes_what_the_change_and_the_request_say(world, make_pipeline, unique):
    make_pipeline({"evil": {"0001_e.yaml": sql_change(f"evil-{unique}", "SELECT '<script>alert(1)</script>'", "SELECT 1")}})
    request = services.request_submit(
        kind=Kind.APPLY, change_id=f"evil-{unique}", actor=world.people["engineer"].actor, reason="<b>bold</b>", source=Run.Source.UI
    ).request

    page = request_page(world, "approver", request.pk)

    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_a_diff_is_shown_once_the_source_moved_after_the_request(world, make_pipeline):
    request = requested(world)
    assert ChangeSource.objects.filter(checksum=request.checksum).exists()
    assert 'id="flk-diff"' not in request_page(world, "approver", request.pk)
    make_pipeline(
        {"db": {"0001_t.yaml": sql_change(world.db_change, f"CREATE TABLE {world.db_table} (id integer, note text)", f"DROP TABLE {world.db_table}")}}
    )

    page = request_page(world, "approver", request.pk)

    diff = section(page, "flk-diff")
    assert 'class="flk-diff-del"' in diff and 'class="flk-diff-add"' in diff and "note text" in diff
    assert "The change was edited after this request" in page
    before = snapshot()
    approved = decide(world, "approver", request.pk, "approve")
    assert any("edited after the request" in m for m in messages_of(approved))
    # Nothing was decided or run (a refusal may leave its own ``access.refused`` entry in the trail).
    assert {k: v for k, v in snapshot().items() if not k.startswith("audit")} == {k: v for k, v in before.items() if not k.startswith("audit")}


def test_a_stored_source_is_immutable_and_stored_once_per_checksum(world):
    request = requested(world)
    stored = ChangeSource.objects.get(checksum=request.checksum)

    services.source_store(checksum=request.checksum, source="something else")

    assert ChangeSource.objects.get(checksum=request.checksum).source == stored.source
    stored.source = "tampered"
    with pytest.raises(ChangeSourceImmutable):
        stored.save()
    with pytest.raises(ChangeSourceImmutable):
        ChangeSource.objects.filter(pk=stored.pk).update(source="tampered")
    with pytest.raises(ChangeSourceImmutable):
        ChangeSource.objects.filter(pk=stored.pk).delete()
    assert ChangeSource.objects.get(pk=stored.pk).source != "tampered"


def test_a_run_stores_the_source_of_each_change_it_applied(world, make_pipeline, unique):
    ApprovalPolicy.objects.all().delete()
    make_pipeline({"more": {"0001_m.yaml": sql_change(f"more-{unique}", f"CREATE TABLE more_{unique} (id integer)")}})
    run_pipeline(actor=world.people["engineer"].actor)

    checksum = services.pipeline_plan().item(f"more-{unique}").change.checksum
    assert f"CREATE TABLE more_{unique}" in ChangeSource.objects.get(checksum=checksum).source


def test_the_upgrade_stores_the_source_of_every_catalogued_change_once(world):
    from django.apps import apps

    migration = importlib.import_module("changes_app.migrations.0010_governance_pages")
    # A change catalogued by the previous release, whose source nobody stored.
    old = ChangeRecord.objects.get(change_id=world.note)
    ChangeRecord.objects.filter(pk=old.pk).update(checksum="0" * 64, source=old.source + "   \r\n\r\n")
    records = dict(ChangeRecord.objects.values_list("checksum", "source"))
    assert not ChangeSource.objects.filter(checksum="0" * 64).exists()

    migration.store_catalogue_sources(apps, None)
    migration.store_catalogue_sources(apps, None)  # again: nothing is duplicated or rewritten

    stored = dict(ChangeSource.objects.values_list("checksum", "source"))
    assert set(records) <= set(stored) and ChangeSource.objects.count() == len(stored)
    assert all(stored[checksum].strip() == source.strip() for checksum, source in records.items())
    assert stored["0" * 64] == old.source  # normalised: trailing blank lines and line endings gone


def test_the_api_request_detail_carries_what_will_run_the_gate_and_the_approvers(world):
    request = requested(world)

    as_approver = client_for(world.people["approver"]).get(f"/api/v1/requests/{request.pk}/").json()
    as_engineer = client_for(world.people["engineer"]).get(f"/api/v1/requests/{request.pk}/").json()

    assert as_approver["id"] == request.pk and as_approver["may_decide"] is True and as_approver["why_not"] == ""
    assert f"CREATE TABLE {world.db_table}" in as_approver["will_run"]["steps"][0]["apply"]
    assert as_approver["will_run"]["steps"][0]["rollback"] == f"DROP TABLE {world.db_table}"
    assert [step["change_id"] for step in as_approver["undo_cascade"]] == [world.db_change]
    assert as_approver["eligible_approvers"] == ["approver"]
    assert as_approver["gate"]["text"] == "Needs 1 approval from: approver (Approver on app-db)."
    assert as_engineer["may_decide"] is False and "Approver on app-db" in as_engineer["why_not"]


# -- running with a plan -------------------------------------------------------------------------------


def test_run_the_pipeline_shows_the_plan_asks_a_reason_then_confirms(world, unique):
    client = world.client("engineer")
    url = reverse("admin:changes_app_run_start")

    plan = client.get(url).content.decode()
    assert world.broken in section(plan, "flk-plan") and labels.label("action", "MANUAL_INTERVENTION") in plan
    assert 'data-action="MANUAL_INTERVENTION"' in plan and 'id="flk-run-continue"' in plan
    refused = client.post(url, {"reason": "  "}).content.decode()
    assert "A reason is required." in refused and 'id="flk-run-confirm"' not in refused
    confirm = client.post(url, {"reason": "release 7"}).content.decode()
    assert 'id="flk-run-confirm"' in confirm and "release 7" in confirm
    assert Run.objects.count() == 1

    broker = Broker(f"decide-run-{unique}")
    try:
        with broker.publishing():
            done = client.post(url, {"reason": "release 7", "confirm": "yes"})
        assert broker.queued() == 1
    finally:
        broker.cleanup()
    run = Run.objects.exclude(pk=world.pipeline_run.pk).get()
    assert (run.reason, run.status, run.actor) == ("release 7", Run.Status.QUEUED, "engineer")
    assert done.url == reverse("admin:changes_app_run_change", args=[run.pk])


def test_only_operators_may_open_the_run_page(world):
    for who in ("compliance", "approver", "platform"):
        assert world.client(who).get(reverse("admin:changes_app_run_start")).status_code == 403
    assert not Run.objects.exclude(pk=world.pipeline_run.pk).exists()


# -- words for people ----------------------------------------------------------------------------------


def test_every_state_action_result_status_kind_and_event_has_a_label():
    from audit_app.models import STATE_EVENTS, ChangeStateName

    names = {
        "state": [s.value for s in ChangeStateName],
        "action": [a.value for a in Action],
        "result": [v for k, v in vars(Result).items() if k.isupper()],
        "run_status": Run.Status.values,
        "run_kind": Run.Kind.values,
        "request_kind": Kind.values,
        "request_status": Status.values,
        "finding_kind": Finding.Kind.values,
        "event": [*STATE_EVENTS.values(), "request.created", "request.approved", "run.finished", "drift.detected", "audit.verified"],
    }
    missing = [(table, name) for table, values in names.items() for name in values if name not in labels.TABLES[table]]
    assert missing == []
    assert labels.label("state", "MANUAL_MARKED_AS_ROLLED_BACK") != "MANUAL_MARKED_AS_ROLLED_BACK"
    assert labels.label("run_status", "NO_CHANGES") == "Nothing to do"


@pytest.mark.parametrize(
    ("done", "total", "text"), [(3, 5, "3 of 5 changes"), (5, 0, "5 of 5 changes"), (1, 0, "1 of 1 change"), (0, 0, "no changes")]
)
def test_progress_reads_as_a_count_of_changes_never_5_of_0(done, total, text):
    assert labels.progress_text(done, total) == text


def test_an_undo_result_reads_undo_and_rolled_back_with_its_progress_in_words(world):
    ApprovalPolicy.objects.all().delete()
    run = services.request_submit(kind=Kind.UNDO, change_id=world.db_change, actor=world.people["engineer"].actor, reason="r", source="UI").run

    page = world.client("engineer").get(reverse("admin:changes_app_run_change", args=[run.pk])).content.decode()

    row = section(page, "flk-results").split('class="flk-result"', 1)[1].split("</tr>")[0]
    assert "<td>Undo</td>" in row and "<strong>Rolled back</strong>" in row
    assert ">SKIP<" not in row and ">ROLLED_BACK<" not in row
    assert page.split('id="flk-count">', 1)[1].startswith("1 of 1 change<")
    listing = world.client("engineer").get(reverse("admin:changes_app_run_changelist")).content.decode()
    assert "1 of 1 change" in listing and "/0<" not in listing


def test_has_verify_says_which_steps_of_a_yaml_change_carry_a_probe(world, make_pipeline, unique):
    steps = (
        f"id: steps-{unique}\nauthor: tests\ntarget: app-db\ntemplate: sql\nsteps:\n"
        f"  - name: first\n    apply: CREATE TABLE s1_{unique} (id integer)\n    rollback: DROP TABLE s1_{unique}\n    verify: SELECT 1\n"
        f"  - name: second\n    apply: CREATE TABLE s2_{unique} (id integer)\n    rollback: DROP TABLE s2_{unique}\n"
    )
    make_pipeline({"steps": {"0001_s.yaml": steps}})
    services.catalogue_sync()

    page = change_page(world, "engineer", f"steps-{unique}")

    assert "1 of 2 steps (first)" in page


def test_re_apply_says_plainly_the_change_is_released_and_offers_a_run(world):
    ApprovalPolicy.objects.all().delete()
    engineer = world.people["engineer"].actor
    services.request_submit(kind=Kind.UNDO, change_id=world.db_change, actor=engineer, reason="r", source="UI")
    run = services.request_submit(kind=Kind.REAPPLY, change_id=world.db_change, actor=engineer, reason="again", source="UI").run

    page = world.client("engineer").get(reverse("admin:changes_app_run_change", args=[run.pk])).content.decode()

    assert "Released, not applied yet." in section(page, "flk-released")
    assert reverse("admin:changes_app_run_start") in section(page, "flk-released")
    assert 'id="flk-run-now"' not in world.client("compliance").get(reverse("admin:changes_app_run_change", args=[run.pk])).content.decode()
    change = change_page(world, "engineer", world.db_change)
    assert "Released: the next run of the pipeline applies it" in change
    assert services.pipeline_plan().item(world.db_change).action == Action.APPLY


# -- one page per change -------------------------------------------------------------------------------


def test_the_change_page_tells_the_whole_story_each_step_linked_to_its_audit_entry(world, monkeypatch):
    inline_execution(monkeypatch)
    request = requested(world)
    decide(world, "approver", request.pk, "approve", "checked")

    page = change_page(world, "compliance", world.db_change)

    story = section(page, "flk-story")
    steps = [chunk.split('"', 1)[0] for chunk in story.split('data-step="')[1:]]
    assert steps[0] == "catalogued"
    assert steps.index("applied") < steps.index("requested") < steps.index("approved") < steps.index("rolled back")
    assert "Approved by approver" in story
    for entry in AuditEntry.objects.filter(change_id=world.db_change, event__in=["request.created", "request.approved", "change.rolled_back"]):
        assert reverse("admin:audit_app_auditentry_change", args=[entry.pk]) in story
    assert reverse("admin:changes_app_changerequest_change", args=[request.pk]) in story
    top = section(page, "flk-change-top")
    assert 'data-state="SKIPPED"' in top and labels.label("state", "SKIPPED") in top
    assert 'data-step="verified"' not in story

    verification_record(audit_verify(), actor=Actor(name="tests", via="cli"))

    story = section(change_page(world, "compliance", world.db_change), "flk-story")
    assert 'data-step="verified"' in story and "these entries are intact" in story


# -- one truth -------------------------------------------------------------------------------------------

#: Finding kinds about a change (they show on that change's page too); the others are about a run,
#: the lock or a worker.
CHANGE_FINDINGS = {
    Finding.Kind.CHECKSUM_MISMATCH,
    Finding.Kind.MISSING_FROM_CODE,
    Finding.Kind.OUT_OF_ORDER,
    Finding.Kind.STALE_STARTED,
    Finding.Kind.VERIFY_FAILED,
    Finding.Kind.PROBE_FAILED,
}
FINDING_KINDS = {kind: kind in CHANGE_FINDINGS for kind in Finding.Kind}


def open_finding(world: World, kind: str, about_change: bool) -> Finding:
    subject = {"change_id": world.db_change, "target": "app-db"} if about_change else {"run_id": world.pipeline_run.pk, "lock_name": "pipeline"}
    return Finding.objects.create(
        fingerprint=f"{kind}-{world.db_change}",
        check_name=Finding.Check.DEFINITION,
        kind=kind,
        environment=ENVIRONMENT,
        summary=f"seen: {kind}",
        **subject,
    )


def what_each_page_says(world: World, who: str) -> dict[str, object]:
    change = change_page(world, who, world.db_change)
    issues = world.client(who).get(reverse("admin:changes_app_changerecord_issues")).content.decode()
    dashboard = world.client(who).get(reverse("admin:index")).content.decode()
    listing = world.client(who).get(reverse("admin:changes_app_changerecord_changelist")).content.decode()
    return {
        "change page findings": sorted(chunk.split('"', 1)[0] for chunk in change.split('id="flk-change-top"')[1].split('data-kind="')[1:]),
        "change page checksum": change.split('id="flk-checksum" data-checksum="')[1].split('"', 1)[0],
        "change list checksum": "drifted" in listing.split(world.db_change, 1)[1].split("</tr>")[0],
        "issues": sorted(chunk.split('"', 1)[0] for chunk in issues.split('data-kind="')[1:]),
        "issues says nothing needs a human": 'id="flk-no-issues"' in issues,
        "dashboard": sorted(chunk.split('"', 1)[0] for chunk in section(dashboard, "flk-issues").split('data-kind="')[1:]),
    }


@pytest.mark.parametrize("kind", list(FINDING_KINDS))
def test_the_change_page_issues_and_the_dashboard_agree_on_each_open_finding(world, kind):
    about_change = FINDING_KINDS[kind]
    open_finding(world, kind, about_change)

    said = what_each_page_says(world, "compliance")

    assert said == {
        "change page findings": [kind] if about_change else [],
        "change page checksum": "drifted" if kind == Finding.Kind.CHECKSUM_MISMATCH else "matches",
        "change list checksum": kind == Finding.Kind.CHECKSUM_MISMATCH,
        "issues": [kind],
        "issues says nothing needs a human": False,
        "dashboard": [kind],
    }
    assert [f["finding"].kind for f in findings_active(world.people["compliance"].user)] == [kind]


def test_a_resolved_finding_leaves_every_page_agreeing_again(world):
    finding = open_finding(world, Finding.Kind.CHECKSUM_MISMATCH, True)
    Finding.objects.filter(pk=finding.pk).update(status=Finding.Status.RESOLVED, status_changed_at=timezone.now())

    said = what_each_page_says(world, "compliance")

    assert said["change page findings"] == [] and said["issues"] == [] and said["dashboard"] == []
    assert said["change page checksum"] == "matches" and said["change list checksum"] is False


def test_an_edit_after_apply_reads_drifted_on_the_change_page_and_is_an_issue(world, make_pipeline):
    make_pipeline({"db": {"0001_t.yaml": sql_change(world.db_change, f"CREATE TABLE {world.db_table} (id bigint)", f"DROP TABLE {world.db_table}")}})

    change = change_page(world, "engineer", world.db_change)
    issues = world.client("engineer").get(reverse("admin:changes_app_changerecord_issues")).content.decode()

    assert 'data-checksum="drifted"' in change and 'id="flk-needs-human"' in change
    assert "id bigint" in section(change, "flk-change-diff")
    assert world.db_change in issues and 'id="flk-no-issues"' not in issues
    assert ChangeRecord.objects.filter(change_id=world.db_change).exists()
