"""The audit trail as a compliance officer works in it (issue 18): "Verify now" for holders of
``verify_chain`` (admin and API), its progress and who asked, the verification and signed checkpoint
that cover each entry, entries rendered as labelled fields with links, target and change filters that
catch governance and drift entries through the rebuildable side index, search by prefix, and a bad
date said so beside its box.

The worker's part is called here as the task calls it (``verify_request_run``); a real worker process
runs it in tests/browser/test_audit_pages.py."""

from __future__ import annotations

import importlib
import re
from html import unescape
from types import SimpleNamespace

import pytest
from django.apps import apps as global_apps
from django.db import connection
from django.urls import reverse

from audit_app import integrity, verify_requests
from audit_app.integrity import audit_verify, checkpoint_write, verification_record
from audit_app.models import AuditEntry, EntrySubject, VerificationRequest
from audit_app.services import Actor, ChangeRef, audit_record
from audit_app.subjects import entry_subject, subjects_rebuild
from changes_app.governance.roles import COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN
from tests.support.audit import entry_write
from tests.support.governance import person
from tests.support.trails import cli

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_app_auditentry_changelist"
VERIFY = "admin:audit_app_auditentry_verify"
PROGRESS = "admin:audit_app_auditentry_verify_progress"
STATUS = "admin:audit_app_auditentry_verify_status"
ALICE = Actor(name="alice", via="ui")


@pytest.fixture
def officer(client):
    member = person("officer", COMPLIANCE_OFFICER)
    client.force_login(member.user)
    client.member = member
    return client


@pytest.fixture
def engineer(client):
    """May read the trail (the Engineer role sees it) but not verify it."""
    member = person("engineer", ENGINEER)
    client.force_login(member.user)
    client.member = member
    return client


@pytest.fixture
def queued(monkeypatch):
    """The tasks queued by name once the request commits (no Celery here: the worker is the browser test's)."""
    sent: list[tuple[str, list]] = []
    monkeypatch.setattr(verify_requests, "_task_send", lambda name, *, args: sent.append((name, args)))
    return sent


def text(response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def trail() -> list[tuple]:
    return list(AuditEntry.objects.order_by("seq").values_list("seq", "event", "actor"))


# -- who may verify ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role, may", [(COMPLIANCE_OFFICER, True), (PLATFORM_ADMIN, True), (ENGINEER, False)])
def test_verify_chain_is_held_by_compliance_officers_and_platform_admins_only(role, may):
    assert person(f"member-{role.split()[0].lower()}", role).user.has_perm("audit_app.verify_chain") is may


def test_the_migration_grants_verify_chain_to_the_two_roles_that_exist():
    from django.contrib.auth.models import Group, Permission

    migration = importlib.import_module("audit_app.migrations.0007_entry_index")
    person("someone", COMPLIANCE_OFFICER)  # the role groups exist
    for group in Group.objects.all():
        group.permissions.remove(*Permission.objects.filter(codename="verify_chain"))

    migration.verify_chain_grant(global_apps, SimpleNamespace(connection=connection))

    holders = set(Group.objects.filter(permissions__codename="verify_chain").values_list("name", flat=True))
    assert holders == {COMPLIANCE_OFFICER, PLATFORM_ADMIN}


def test_the_audit_list_offers_verify_now_to_a_compliance_officer(officer):
    response = officer.get(reverse(CHANGELIST))

    content = response.content.decode()
    assert 'id="flk-verify-now"' in content
    form = re.search(r'<form method="post" action="([^"]+)" id="flk-verify-form">(.*?)</form>', content, re.S)
    assert form and form.group(1) == reverse(VERIFY)
    assert 'name="csrfmiddlewaretoken"' in form.group(2)
    assert "The chain has not been verified yet: use “Verify now”" in text(response)


def test_the_audit_list_offers_no_verify_now_to_an_engineer(engineer):
    response = engineer.get(reverse(CHANGELIST))

    assert response.status_code == 200
    assert 'id="flk-verify-now"' not in response.content.decode()


def test_verify_now_is_refused_to_an_engineer_and_writes_nothing(engineer, queued):
    before = trail()

    response = engineer.post(reverse(VERIFY))

    assert response.status_code == 403
    assert trail() == before
    assert not VerificationRequest.objects.exists()
    assert queued == []


def test_verify_now_is_refused_to_an_anonymous_visitor(client, queued):
    response = client.post(reverse(VERIFY))

    assert response.status_code == 302 and reverse("admin:login") in response["Location"]
    assert not VerificationRequest.objects.exists()


def test_verify_now_only_answers_a_post(officer):
    assert officer.get(reverse(VERIFY)).status_code == 405
    assert not VerificationRequest.objects.exists()


def test_verify_now_keeps_csrf_protection(queued):
    from django.test import Client

    guarded = Client(enforce_csrf_checks=True)
    guarded.force_login(person("officer", COMPLIANCE_OFFICER).user)

    assert guarded.post(reverse(VERIFY)).status_code == 403
    assert not VerificationRequest.objects.exists()


# -- asking records who asked, and queues the worker ----------------------------------------------------


def test_verify_now_records_the_requester_and_queues_the_verification_by_name(officer, queued, django_capture_on_commit_callbacks):
    entry_write("change.applied", change_id="c-1", target="app-db")

    with django_capture_on_commit_callbacks(execute=True):
        response = officer.post(reverse(VERIFY))

    request = VerificationRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(PROGRESS, args=[request.pk])
    entry = AuditEntry.objects.get(event="audit.verify_requested")
    assert (entry.actor, entry.actor_user_id, entry.details["request"]) == ("officer", officer.member.user.pk, request.pk)
    assert (request.status, request.requested_by, request.request_entry_id) == (VerificationRequest.Status.QUEUED, "officer", entry.pk)
    assert queued == [("flamingock.audit_verify_request", [request.pk])]


def test_a_second_click_while_one_is_queued_joins_it(officer, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        officer.post(reverse(VERIFY))
        second = officer.post(reverse(VERIFY), follow=True)

    assert VerificationRequest.objects.count() == 1
    assert AuditEntry.objects.filter(event="audit.verify_requested").count() == 1
    assert len(queued) == 1
    assert "A verification is already under way" in text(second)


def test_verify_now_on_a_closed_trail_says_why_and_writes_nothing(officer, queued):
    from tests.audit_app.test_fail_closed import forge

    last = entry_write("change.applied", change_id="c-1")
    forge(last.seq + 1, last.entry_hash, last.created_at)  # a row around the writer closes the trail
    before = AuditEntry.objects.count()

    response = officer.post(reverse(VERIFY), follow=True)
    api = officer.post("/api/v1/audit/verify/")

    assert "the audit trail is closed" in text(response).lower()
    assert (api.status_code, api.json()["error"]["code"]) == (409, "action_refused")
    assert AuditEntry.objects.count() == before
    assert not VerificationRequest.objects.exists() and queued == []


def test_the_task_is_registered_under_the_name_it_is_queued_by():
    from flamingock_site.celery import app

    app.loader.import_default_modules()
    assert verify_requests.VERIFY_REQUEST_TASK in app.tasks


# -- the worker's part: progress, verdict, who asked -----------------------------------------------------


def test_the_run_reports_progress_and_records_the_verdict_naming_who_asked(officer, queued, monkeypatch):
    for index in range(23):
        entry_write("change.applied", change_id=f"c-{index}", target="app-db")
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()
    monkeypatch.setattr(integrity, "CHUNK", 5)
    monkeypatch.setattr(verify_requests, "PROGRESS_EVERY", 0)
    seen: list[tuple[int, int]] = []
    write = verify_requests._ProgressReporter.__call__
    monkeypatch.setattr(
        verify_requests._ProgressReporter, "__call__", lambda self, done, total: (seen.append((done, total)), write(self, done, total))
    )

    head = AuditEntry.objects.order_by("-seq").values_list("seq", flat=True).first()

    finished = verify_requests.verify_request_run(request_id=request.pk)

    assert seen[0] == (0, head) and seen[1:] == [(5, head), (10, head), (15, head), (20, head)]
    assert (finished.status, finished.entries_checked, finished.total) == (VerificationRequest.Status.DONE, head, head)
    assert finished.verification.ok and finished.verification.from_seq == 1 and finished.verification.head_seq == head
    verified = AuditEntry.objects.filter(event="audit.verified").get()
    assert verified.details["requested_by"] == "officer"
    assert verified.details["request"] == request.pk
    assert verified.details["request_entry"] == request.request_entry_id
    assert verified.actor == "service:audit-verifier"


def test_a_run_on_a_broken_chain_says_where_it_broke(officer, queued):
    from tests.support.audit import sql, triggers_dropped

    entries = [entry_write("change.applied", change_id=f"c-{index}") for index in range(4)]
    officer.post(reverse(VERIFY))
    with triggers_dropped():
        sql(f"UPDATE {AuditEntry._meta.db_table} SET actor = 'mallory' WHERE id = %s", [entries[1].pk])

    finished = verify_requests.verify_request_run(request_id=VerificationRequest.objects.get().pk)

    status = officer.get(reverse(STATUS, args=[finished.pk])).json()
    assert (status["status"], status["ok"], status["first_broken_seq"]) == ("DONE", False, entries[1].seq)
    assert status["message"].startswith(f"BROKEN at #{entries[1].seq}")


def test_a_redelivered_task_does_not_verify_twice(officer, queued):
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()
    verify_requests.verify_request_run(request_id=request.pk)

    verify_requests.verify_request_run(request_id=request.pk)

    assert AuditEntry.objects.filter(event="audit.verified").count() == 1


def test_a_run_that_crashes_is_marked_failed_with_its_error(officer, queued, monkeypatch):
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()

    def broken(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(verify_requests, "audit_verify", broken)
    with pytest.raises(RuntimeError):
        verify_requests.verify_request_run(request_id=request.pk)

    status = officer.get(reverse(STATUS, args=[request.pk])).json()
    assert (status["status"], status["finished"]) == ("FAILED", True)
    assert "the database went away" in status["message"]


# -- the progress view --------------------------------------------------------------------------------


def test_the_status_view_reports_a_queued_then_running_then_finished_verification(officer, queued):
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()

    queued_status = officer.get(reverse(STATUS, args=[request.pk])).json()
    VerificationRequest.objects.filter(pk=request.pk).update(status="RUNNING", entries_checked=250, total=1000)
    running = officer.get(reverse(STATUS, args=[request.pk])).json()
    verify_requests.verify_request_run(request_id=request.pk)
    done = officer.get(reverse(STATUS, args=[request.pk])).json()

    assert (queued_status["status"], queued_status["finished"], queued_status["message"]) == ("QUEUED", False, "queued: waiting for a worker")
    assert (running["status"], running["percent"], running["message"]) == ("RUNNING", 25, "250 of 1000 entries checked")
    assert (done["status"], done["finished"], done["ok"], done["percent"]) == ("DONE", True, True, 100)
    assert done["verification_url"] == reverse("admin:audit_app_verification_change", args=[done["verification_id"]])
    assert done["requested_by"] == "officer"


def test_the_status_and_progress_views_are_refused_to_an_engineer(officer, queued, client):
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()
    client.force_login(person("engineer", ENGINEER).user)

    assert client.get(reverse(STATUS, args=[request.pk])).status_code == 403
    assert client.get(reverse(PROGRESS, args=[request.pk])).status_code == 403


def test_the_status_of_an_unknown_request_is_404(officer):
    assert officer.get(reverse(STATUS, args=[999])).status_code == 404


def test_the_progress_page_shows_who_asked_and_polls_the_status_view(officer, queued):
    officer.post(reverse(VERIFY))
    request = VerificationRequest.objects.get()

    response = officer.get(reverse(PROGRESS, args=[request.pk]))

    assert "Requested by officer" in text(response)
    assert f'data-url="{reverse(STATUS, args=[request.pk])}"' in response.content.decode()
    assert reverse("admin:audit_app_auditentry_change", args=[request.request_entry_id]) in response.content.decode()


def test_the_list_links_to_a_verification_under_way(officer, queued):
    officer.post(reverse(VERIFY))

    response = officer.get(reverse(CHANGELIST))

    assert "A verification requested by officer is queued." in text(response)


# -- the API says the same ------------------------------------------------------------------------------


def test_the_api_verifies_now_for_a_compliance_officer(officer, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = officer.post("/api/v1/audit/verify/")

    assert response.status_code == 202
    body = response.json()
    request = VerificationRequest.objects.get()
    assert (body["id"], body["status"], body["requested_by"]) == (request.pk, "QUEUED", "officer")
    assert AuditEntry.objects.get(event="audit.verify_requested").actor == "officer"
    assert queued == [("flamingock.audit_verify_request", [request.pk])]
    verify_requests.verify_request_run(request_id=request.pk)
    status = officer.get(f"/api/v1/audit/verify/{request.pk}/").json()
    assert (status["status"], status["ok"]) == ("DONE", True)
    assert officer.post("/api/v1/audit/verify/").status_code == 202  # the first one is over: a new one


def test_the_api_refuses_verify_now_to_an_engineer(engineer, queued):
    before = trail()

    response = engineer.post("/api/v1/audit/verify/")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "verify_chain" in response.json()["error"]["message"]
    assert engineer.get("/api/v1/audit/verify/1/").status_code == 403
    assert trail() == before and not VerificationRequest.objects.exists()


def test_the_api_answers_a_second_request_with_the_one_under_way(officer, queued):
    first = officer.post("/api/v1/audit/verify/")
    second = officer.post("/api/v1/audit/verify/")

    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]


# -- what covers each entry -----------------------------------------------------------------------------


def test_each_entry_shows_the_verification_and_the_checkpoint_that_cover_it(officer):
    early = [entry_write("change.applied", change_id=f"c-{index}") for index in range(3)]
    verification = verification_record(audit_verify(), actor=ALICE)  # covers #1..the head, then writes #head+1
    checkpoint = checkpoint_write(reason="test", force=True)
    late = entry_write("change.applied", change_id="c-late")

    early_page = text(officer.get(reverse("admin:audit_app_auditentry_change", args=[early[0].pk])))
    late_page = text(officer.get(reverse("admin:audit_app_auditentry_change", args=[late.pk])))
    listing = officer.get(reverse(CHANGELIST))

    assert f"verified intact by verification {verification.pk}" in early_page
    assert f"#1–#{verification.head_seq}" in early_page
    assert f"signed checkpoint at #{checkpoint.seq}" in early_page
    assert "not verified yet" in late_page and "no checkpoint yet" in late_page
    marks = {entry.seq: entry.coverage for entry in listing.context["cl"].result_list}
    assert marks[early[0].seq]["verification"].pk == verification.pk
    assert marks[early[0].seq]["checkpoint"].pk == checkpoint.pk
    assert marks[late.seq] == {"verification": None, "checkpoint": None}
    assert "✓ verified" in text(listing) and f"signed #{checkpoint.seq}" in text(listing)


def test_the_api_entry_names_the_verification_and_checkpoint_that_cover_it(officer):
    early = entry_write("change.applied", change_id="c-1")
    verification = verification_record(audit_verify(), actor=ALICE)
    checkpoint = checkpoint_write(reason="test", force=True)
    late = entry_write("change.applied", change_id="c-late")

    covered = officer.get(f"/api/v1/audit/entries/{early.pk}/").json()["covered_by"]
    uncovered = officer.get(f"/api/v1/audit/entries/{late.pk}/").json()["covered_by"]

    assert covered["verification"]["id"] == verification.pk and covered["verification"]["ok"] is True
    assert (covered["verification"]["from_seq"], covered["verification"]["head_seq"]) == (1, verification.head_seq)
    assert covered["checkpoint"] == {"id": checkpoint.pk, "seq": checkpoint.seq, "key_id": checkpoint.key_id}
    assert uncovered == {"verification": None, "checkpoint": None}


def test_an_entry_after_a_break_is_marked_broken(officer):
    from tests.support.audit import sql, triggers_dropped

    entries = [entry_write("change.applied", change_id=f"c-{index}") for index in range(3)]
    with triggers_dropped():
        sql(f"UPDATE {AuditEntry._meta.db_table} SET actor = 'mallory' WHERE id = %s", [entries[1].pk])
    verification_record(audit_verify(), actor=ALICE)

    first = text(officer.get(reverse("admin:audit_app_auditentry_change", args=[entries[0].pk])))
    broken = text(officer.get(reverse("admin:audit_app_auditentry_change", args=[entries[2].pk])))

    assert "verified intact by" in first
    assert "found BROKEN by" in broken


def test_a_verification_from_a_checkpoint_covers_only_what_follows_it(officer):
    before = entry_write("change.applied", change_id="c-before")
    checkpoint_write(reason="test", force=True)
    after = entry_write("change.applied", change_id="c-after")
    verification = verification_record(audit_verify(from_checkpoint=True), actor=ALICE)

    covered = verify_requests.coverage([before.seq, after.seq])

    assert verification.from_seq == before.seq + 1
    assert covered[before.seq]["verification"] is None
    assert covered[after.seq]["verification"].pk == verification.pk


# -- entries as people read them ------------------------------------------------------------------------


def test_an_entry_page_shows_labelled_fields_with_links_not_raw_json(officer):
    user = officer.member.user
    entry = audit_record(
        event="request.approved",
        actor=Actor(name="officer", user_id=user.pk, via="ui"),
        environment="prod",
        change=ChangeRef(id="c-users", target="app-db"),
        run_id="6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11",
        reason="<b>looks right</b>",
        details={"request_id": 7, "finding": 3, "required_approvals": 2, "nested": {"user": "bob"}, "note": "<script>alert(1)</script>"},
    )

    response = officer.get(reverse("admin:audit_app_auditentry_change", args=[entry.pk]))
    content = response.content.decode()

    assert response.status_code == 200
    assert '<dt>Request</dt><dd><a href="' + reverse("admin:changes_app_changerequest_change", args=[7]) in content
    assert reverse("admin:changes_app_finding_change", args=[3]) in content
    assert reverse("admin:changes_app_run_change", args=["6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11"]) in content
    assert reverse("admin:changes_app_changerecord_changelist") + "?change_id=c-users" in content
    assert reverse("admin:changes_app_targetsystem_changelist") + "?name=app-db" in content
    assert reverse("admin:auth_user_change", args=[user.pk]) in content
    assert reverse("admin:auth_user_changelist") + "?username=bob" in content
    assert "<dt>Required approvals</dt><dd>2</dd>" in content
    assert "<script>alert(1)</script>" not in content and "&lt;script&gt;alert(1)&lt;/script&gt;" in content
    assert "<b>looks right</b>" not in content


def test_the_list_links_the_change_run_target_and_user_of_each_entry(officer):
    user = officer.member.user
    audit_record(
        event="change.applied",
        actor=Actor(name="officer", user_id=user.pk, via="ui"),
        environment="dev",
        change=ChangeRef(id="c-users", target="app-db"),
        run_id="6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11",
    )

    content = officer.get(reverse(CHANGELIST)).content.decode()

    assert 'href="' + reverse("admin:changes_app_changerecord_changelist") + '?change_id=c-users"' in content
    assert 'href="' + reverse("admin:changes_app_run_change", args=["6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11"]) + '"' in content
    assert 'href="' + reverse("admin:auth_user_change", args=[user.pk]) + '"' in content


def test_the_list_is_laid_out_to_fit_its_box():
    from django.template.loader import get_template

    source = get_template("admin/audit_app/auditentry/change_list.html").template.source
    assert "table-layout: fixed" in source and "overflow-wrap: anywhere" in source


# -- target and change filters through the side index -----------------------------------------------------


@pytest.fixture
def governance_entries() -> dict[str, AuditEntry]:
    """Entries that name their subject only in their details, shaped as their writers shape them."""
    system = Actor(name="system", via="schedule")
    return {
        "applied": entry_write("change.applied", change_id="c-users", target="app-db"),
        "policy": audit_record(
            event="policy.changed",
            actor=ALICE,
            environment="dev",
            details={"target": "app-db", "environment": "prod", "previous": 1, "required_approvals": 2},
        ),
        "permission": audit_record(
            event="permission.granted",
            actor=ALICE,
            environment="dev",
            details={
                "kind": "object_permission",
                "user": "bob",
                "permission": "changes_app.operate_targetsystem",
                "object_type": "changes_app.targetsystem",
                "object_pk": "1",
                "object": "app-db",
            },
        ),
        "drift": audit_record(
            event="drift.detected",
            actor=system,
            environment="dev",
            change=ChangeRef(id="", target="app-db"),
            reason="checksum mismatch",
            details={"finding": 4, "kind": "checksum_mismatch", "change_id": "c-users", "stage": "default"},
        ),
        "other": audit_record(event="policy.changed", actor=ALICE, environment="dev", details={"target": "ext-pg", "required_approvals": 1}),
        "token": audit_record(event="permission.granted", actor=ALICE, environment="dev", details={"credential": "api_token", "user": "bob"}),
    }


def listed_events(response) -> set[str]:
    assert response.status_code == 200
    return {entry.event for entry in response.context["cl"].result_list}


def test_the_target_filter_catches_policy_permission_and_drift_entries(officer, governance_entries):
    response = officer.get(reverse(CHANGELIST), {"target": "app-db"})

    seqs = {entry.seq for entry in response.context["cl"].result_list}
    expected = {governance_entries[name].seq for name in ("applied", "policy", "permission", "drift")}
    assert seqs == expected


def test_the_target_filter_offers_targets_named_only_in_details(officer, governance_entries):
    response = officer.get(reverse(CHANGELIST))

    specs = {spec.title: spec for spec in response.context["cl"].filter_specs}
    assert {"app-db", "ext-pg"} <= set(specs["target"].lookup_choices)
    assert "ext-pg" not in set(AuditEntry.objects.values_list("target", flat=True))


def test_the_change_filter_catches_the_drift_entry_that_names_the_change(officer, governance_entries):
    response = officer.get(reverse(CHANGELIST), {"change_id": "c-users"})

    assert {entry.seq for entry in response.context["cl"].result_list} == {governance_entries["applied"].seq, governance_entries["drift"].seq}


def test_the_api_filters_through_the_same_index(officer, governance_entries):
    by_target = officer.get("/api/v1/audit/entries/", {"target": "app-db"}).json()["results"]
    by_change = officer.get("/api/v1/audit/entries/", {"change_id": "c-users"}).json()["results"]

    assert {row["event"] for row in by_target} == {"change.applied", "policy.changed", "permission.granted", "drift.detected"}
    assert {row["event"] for row in by_change} == {"change.applied", "drift.detected"}


@pytest.mark.parametrize(
    "columns, details, expected",
    [
        (("app-db", "c-1"), {"target": "other"}, ("app-db", "c-1")),
        (("", ""), {"target": "app-db", "change_id": "c-1"}, ("app-db", "c-1")),
        (("", ""), {"target_system": "app-db"}, ("app-db", "")),
        (("", ""), {"object_type": "changes_app.targetsystem", "object": "app-db"}, ("app-db", "")),
        (("", ""), {"object_type": "auth.group", "object": "admins"}, ("", "")),
        (("", ""), {"target": 5, "change_id": ["x"]}, ("", "")),
        (("", ""), {"target": "x" * 201}, ("", "")),
        (("", ""), None, ("", "")),
    ],
    ids=["own columns win", "named in details", "target_system", "object permission", "other object", "not text", "too long", "no details"],
)
def test_an_entry_subject_is_its_columns_or_what_its_details_name(columns, details, expected):
    assert entry_subject(target=columns[0], change_id=columns[1], details=details) == expected


def test_the_writer_indexes_every_entry_it_writes(governance_entries):
    indexed = dict(EntrySubject.objects.values_list("entry_id", "target"))

    assert set(indexed) == set(AuditEntry.objects.exclude(seq=None).values_list("seq", flat=True))
    assert indexed[governance_entries["policy"].seq] == "app-db"
    assert indexed[governance_entries["token"].seq] == ""


def test_reindex_rebuilds_the_same_index(governance_entries):
    written = sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id"))
    EntrySubject.objects.filter(entry_id=governance_entries["policy"].seq).update(target="wrong")
    EntrySubject.objects.filter(entry_id=governance_entries["drift"].seq).delete()
    EntrySubject.objects.create(entry_id=10_000, target="orphan")

    result = cli("audit", "reindex")

    assert result.code == 0, result.err
    assert f"{len(written)} entries indexed" in result.out
    assert sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id")) == written


def test_the_migration_indexes_the_entries_written_before_it(governance_entries):
    written = sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id"))
    EntrySubject.objects.all().delete()
    migration = importlib.import_module("audit_app.migrations.0007_entry_index")

    migration.subjects_fill(global_apps, SimpleNamespace(connection=connection))

    assert sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id")) == written


def test_a_rebuild_in_small_batches_gives_the_same_index(governance_entries):
    written = sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id"))
    EntrySubject.objects.all().delete()

    assert subjects_rebuild(batch=2) == len(written)
    assert sorted(EntrySubject.objects.values_list("entry_id", "target", "change_id")) == written


# -- search by prefix, dates ------------------------------------------------------------------------------


def test_search_finds_change_ids_and_actors_by_their_start(officer):
    entries = [
        entry_write("change.applied", change_id="billing-001", actor=ALICE),
        entry_write("change.applied", change_id="billing-002"),
        entry_write("change.applied", change_id="users-billing"),
    ]

    by_change = officer.get(reverse(CHANGELIST), {"q": "billing-"})
    by_actor = officer.get(reverse(CHANGELIST), {"q": "ali"})

    assert {e.seq for e in by_change.context["cl"].result_list} == {entries[0].seq, entries[1].seq}
    assert {e.seq for e in by_actor.context["cl"].result_list} == {entries[0].seq}


@pytest.mark.parametrize("value", ["07/12/2026", "2026-02-31"])
def test_a_bad_date_is_said_beside_its_box_and_lists_nothing(officer, value):
    entry_write("change.applied", change_id="c-1")

    response = officer.get(reverse(CHANGELIST), {"created_at__gte": value})
    content = response.content.decode()

    assert list(response.context["cl"].result_list) == []
    box = re.search(r'<input type="(\w+)" id="filter-created_at__gte"[^>]*value="([^"]*)"', content)
    assert box and box.groups() == ("text", value)
    error = re.search(r'<p class="errornote flk-filter-error" id="filter-created_at__gte-error" role="alert">([^<]+)</p>', content)
    assert error and unescape(error.group(1)) == f"“{value}” is not a date (YYYY-MM-DD, or YYYY-MM-DD HH:MM)."


def test_date_boxes_are_date_pickers(officer):
    content = officer.get(reverse(CHANGELIST), {"created_at__gte": "2026-12-01"}).content.decode()

    assert re.search(r'<input type="date" id="filter-created_at__gte"[^>]*value="2026-12-01"', content)
    assert re.search(r'<input type="date" id="filter-created_at__lt"[^>]*value=""', content)
