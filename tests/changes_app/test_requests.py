"""Requests and approvals (docs/semantics.md §5, §9): bound to the change's id, checksum and environment; N
distinct approvals; nobody decides their own request; expiry, cancellation, comments; approved
requests executed in this process or by a worker; the resolver waits for an APPLY approval;
notifications to the people who can act; bad input changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.permissions import PermissionRefused
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER
from changes_app.models import Approval, ChangeRequest, Run
from changes_app.services.schedules import DEFAULT_SCHEDULES, schedules_ensure
from changes_app.tasks import requests_expire_task
from tests.support.governance import events, last_entry_id, person, policy, snapshot
from tests.support.trails import cli, journal_change, next_action, python_sql_change, run_pipeline, sql_change, table_exists
from tests.support.workers import Broker, Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status
UI, CLI = Run.Source.UI, Run.Source.CLI


@pytest.fixture
def staging(settings):
    """An unprotected environment whose policies the test writes."""
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    return "staging"


@pytest.fixture
def people(targets):
    """An engineer and two approvers on app-db and the journal, a compliance officer."""
    return {
        "eng": person("eng", ENGINEER, operate=("app-db", "journal")),
        "alice": person("alice", APPROVER, approve=("app-db", "journal")),
        "bob": person("bob", APPROVER, approve=("app-db", "journal")),
        "carol": person("carol", COMPLIANCE_OFFICER),
    }


def states(change_id: str) -> list[str]:
    """The change's states in the ledger, in order (request events left out)."""
    return list(AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("id").values_list("state", flat=True))


def table_change(change_id: str, table: str, **kwargs) -> str:
    return sql_change(change_id, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}", **kwargs)


def applied_table(make_pipeline, unique, people, stage: str = "main") -> tuple[str, str]:
    """One applied app-db change creating a table (applied before any policy exists)."""
    change, table = f"table-{unique}", f"req_{unique}"
    make_pipeline({stage: {"0001_t.yaml": table_change(change, table)}})
    assert run_pipeline(actor=people["eng"].actor).status == Run.Status.SUCCEEDED
    return change, table


def submit(kind, change_id, who, reason="because", **kwargs):
    return services.request_submit(kind=kind, change_id=change_id, actor=who.actor, reason=reason, source=UI, **kwargs)


# -- policy 0: approved automatically, recorded, performed ---------------------------------------------


def test_a_policy_of_zero_approves_automatically_records_it_and_performs_the_action(make_pipeline, unique, journal, staging, people):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change, rollback="ok")}})
    run_pipeline(actor=people["eng"].actor)
    policy("journal", "staging", 0)
    since = last_entry_id()

    submitted = submit(Kind.UNDO, change, people["eng"], reason="bad release")

    request, run = submitted.request, submitted.run
    assert (request.status, request.required_approvals, request.run_id) == (Status.EXECUTED, 0, run.id)
    assert run.status == Run.Status.SUCCEEDED and run.kind == Run.Kind.UNDO and run.actor == "eng"
    assert events(since=since, change_id=change) == [
        ("request.created", "eng"),
        ("request.approved", "service:approval-policy"),
        ("change.rollback_started", "eng"),
        ("change.rolled_back", "eng"),
        ("change.skipped", "eng"),
    ]
    automatic = AuditEntry.objects.get(event="request.approved", change_id=change)
    assert automatic.details["automatic"] is True and "requires no approval" in automatic.reason
    rolled_back = AuditEntry.objects.get(change_id=change, state="ROLLED_BACK")
    assert rolled_back.details["approval"] == {
        "request_id": request.pk,
        "kind": "UNDO",
        "checksum": request.checksum,
        "required": 0,
        "approved_by": [],
        "automatic": True,
    }
    assert AuditEntry.objects.get(event="run.queued", run_id=run.id).details["request_id"] == request.pk
    assert [entry["op"] for entry in journal.entries()] == ["apply", "rollback"]


def test_without_a_policy_an_unprotected_environment_performs_directly_and_records_no_request(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)

    submitted = submit(Kind.UNDO, change, people["eng"])

    assert submitted.request is None and submitted.run.status == Run.Status.SUCCEEDED
    assert not ChangeRequest.objects.exists()
    assert not table_exists(table)


# -- N distinct approvals ------------------------------------------------------------------------------


def test_an_undo_needs_n_distinct_approvals_then_runs_with_their_names_in_the_ledger(make_pipeline, unique, people, staging, mailoutbox):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 2)
    eng, alice, bob = people["eng"], people["alice"], people["bob"]

    submitted = submit(Kind.UNDO, change, eng, reason="rollback release 7")

    request = submitted.request
    assert submitted.run is None and submitted.awaiting_approval
    assert (request.status, request.required_approvals, request.requester_name) == (Status.PENDING, 2, "eng")
    assert table_exists(table)

    first = services.request_approve(request_id=request.pk, actor=alice.actor, comment="looks right", inline=True)
    assert first.status == Status.PENDING and first.run is None
    assert table_exists(table)
    before = snapshot()
    with pytest.raises(services.RequestRefused, match="alice has already decided request"):
        services.request_approve(request_id=request.pk, actor=alice.actor, inline=True)
    assert snapshot() == before

    second = services.request_approve(request_id=request.pk, actor=bob.actor, inline=True)

    assert second.status == Status.EXECUTED and second.run.status == Run.Status.SUCCEEDED
    assert second.run.kind == Run.Kind.UNDO and second.run.actor == "eng" and second.run.reason == "rollback release 7"
    assert not table_exists(table)
    assert states(change)[-2:] == ["ROLLED_BACK", "SKIPPED"]
    decisions = AuditEntry.objects.filter(event="request.approved", change_id=change).order_by("id")
    assert [(e.actor, e.reason, e.details["approvals"], e.details["required"], e.details["final"]) for e in decisions] == [
        ("alice", "looks right", 1, 2, False),
        ("bob", "", 2, 2, True),
    ]
    assert AuditEntry.objects.get(change_id=change, state="ROLLED_BACK").details["approval"]["approved_by"] == ["alice", "bob"]
    assert [(a.approver_name, a.decision, a.checksum) for a in request.approvals.all()] == [
        ("alice", "APPROVE", request.checksum),
        ("bob", "APPROVE", request.checksum),
    ]


@pytest.mark.parametrize("decide", ["approve", "reject"])
def test_nobody_decides_their_own_request_not_even_a_superuser(make_pipeline, unique, people, staging, decide):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    root = person("root", superuser=True)
    request = submit(Kind.UNDO, change, root).request
    before = snapshot()

    with pytest.raises(services.SelfDecisionRefused, match="nobody decides their own request"):
        if decide == "approve":
            services.request_approve(request_id=request.pk, actor=root.actor, inline=True)
        else:
            services.request_reject(request_id=request.pk, actor=root.actor)

    assert snapshot() == before
    assert table_exists(table)


def test_the_database_refuses_an_approval_by_the_requester(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    request = submit(Kind.UNDO, change, people["eng"]).request

    with pytest.raises(IntegrityError), transaction.atomic():
        Approval.objects.create(
            request=request,
            approver=people["eng"].user,
            approver_name="eng",
            requester=people["eng"].user,
            decision="APPROVE",
            checksum=request.checksum,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Approval.objects.bulk_create(
            [
                Approval(request=request, approver=people["alice"].user, approver_name="alice", decision="APPROVE", checksum="x"),
                Approval(request=request, approver=people["alice"].user, approver_name="alice", decision="REJECT", checksum="x"),
            ]
        )


def test_one_rejection_ends_the_request_and_nothing_runs(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 2)
    request = submit(Kind.UNDO, change, people["eng"]).request
    services.request_approve(request_id=request.pk, actor=people["alice"].actor)

    rejected = services.request_reject(request_id=request.pk, actor=people["bob"].actor, comment="not during the sale")

    assert (rejected.status, rejected.status_reason) == (Status.REJECTED, "rejected by bob: not during the sale")
    entry = AuditEntry.objects.get(event="request.rejected")
    assert (entry.actor, entry.reason, entry.change_id, entry.details["request_id"]) == ("bob", "not during the sale", change, request.pk)
    assert table_exists(table) and not Run.objects.filter(kind=Run.Kind.UNDO).exists()


@pytest.mark.parametrize(
    ("resolution", "kind", "state"),
    [("applied", "MARK_APPLIED", "MANUAL_MARKED_AS_APPLIED"), ("rolled-back", "MARK_ROLLED_BACK", "MANUAL_MARKED_AS_ROLLED_BACK")],
)
def test_a_manual_fix_through_the_command_line_awaits_approval_then_records_the_resolution(
    make_pipeline, unique, people, staging, journal, monkeypatch, resolution, kind, state
):
    change = f"half-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change, fail="half way")}})
    run_pipeline(actor=people["eng"].actor)
    policy("journal", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["eng"].token)

    requested = cli("fix", change, "--resolution", resolution, "--reason", "checked the journal", "--json")

    assert requested.code == 4 and requested.json()["kind"] == kind
    assert states(change) == ["STARTED", "FAILED"]
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["alice"].token)
    approved = cli("approve", str(requested.json()["id"]), "--json")
    assert approved.code == 0 and approved.json()["kind"] == "FIX", approved.out
    assert states(change) == ["STARTED", "FAILED", state]
    entry = AuditEntry.objects.get(change_id=change, state=state)
    assert (entry.actor, entry.reason, entry.details["resolution"], entry.details["approval"]["approved_by"]) == (
        "eng",
        "checked the journal",
        resolution,
        ["alice"],
    )


# -- APPLY approvals and the resolver --------------------------------------------------------------------


def test_in_a_protected_environment_a_change_awaits_an_approved_apply_request_and_order_is_kept(make_pipeline, unique, people, settings, monkeypatch):
    settings.FLAMINGOCK_ENVIRONMENT = "prod"
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.yaml": table_change(first, f"pa_{unique}"), "0002_b.yaml": table_change(second, f"pb_{unique}")}})
    eng, alice = people["eng"], people["alice"]

    plan = services.pipeline_plan()
    assert [(i.change.id, i.action.value, i.reason) for i in plan.items] == [
        (first, "AWAITING_APPROVAL", "needs 1 approval(s) on app-db in prod: request its apply"),
        (second, "BLOCKED", f"waits for {first}, which awaits approval"),
    ]
    monkeypatch.setenv("FLAMINGOCK_TOKEN", eng.token)
    waiting = cli("run", "--json")
    assert waiting.code == 4 and waiting.json()["status"] == "AWAITING_APPROVAL"
    assert not table_exists(f"pa_{unique}")

    request = submit(Kind.APPLY, first, eng, reason="release 12").request
    assert next_action(first) == "AWAITING_APPROVAL"
    assert services.pipeline_plan().item(first).reason == f"request #{request.pk} has 0 of 1 approval(s)"
    approved = services.request_approve(request_id=request.pk, actor=alice.actor, inline=True)
    assert approved.status == Status.APPROVED and approved.run is None
    assert [next_action(first), next_action(second)] == ["APPLY", "AWAITING_APPROVAL"]

    ran = cli("run", "--json")

    assert ran.code == 4, ran.out
    assert {row["change_id"]: row["result"] for row in ran.json()["results"]} == {first: "APPLIED", second: "AWAITING_APPROVAL"}
    assert table_exists(f"pa_{unique}") and not table_exists(f"pb_{unique}")
    applied = AuditEntry.objects.get(change_id=first, state="APPLIED")
    assert applied.details["approval"]["request_id"] == request.pk and applied.details["approval"]["approved_by"] == ["alice"]
    request.refresh_from_db()
    assert request.status == Status.EXECUTED and str(request.run_id) == ran.json()["run_id"]


def test_an_apply_approval_covers_retries_until_the_change_is_applied_once(make_pipeline, unique, people, staging):
    change, table = f"retry-{unique}", f"retry_{unique}"
    # Fails until the table it writes to exists: a retry with the same code, the same checksum.
    make_pipeline({"main": {"0001_r.py": python_sql_change(change, f"INSERT INTO {table} VALUES (1)", f"DELETE FROM {table}")}})
    policy("app-db", "staging", 1)
    eng, alice, bob = people["eng"], people["alice"], people["bob"]
    request = submit(Kind.APPLY, change, eng).request
    services.request_approve(request_id=request.pk, actor=alice.actor)

    failed = run_pipeline(actor=eng.actor)
    assert failed.status == Run.Status.FAILED
    assert next_action(change) == "APPLY"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id integer)")
    retried = run_pipeline(actor=eng.actor)
    assert retried.status == Run.Status.SUCCEEDED
    request.refresh_from_db()
    assert request.status == Status.EXECUTED and request.run_id == retried.id

    # Applied once, the approval is spent, even if it were never marked executed: it was given for
    # the apply generation before this one.
    ChangeRequest.objects.filter(pk=request.pk).update(status=Status.APPROVED)
    undo = submit(Kind.UNDO, change, eng).request
    services.request_approve(request_id=undo.pk, actor=bob.actor, inline=True)
    release = submit(Kind.REAPPLY, change, eng).request
    services.request_approve(request_id=release.pk, actor=bob.actor, inline=True)
    assert states(change)[-3:] == ["ROLLED_BACK", "SKIPPED", "MANUAL_MARKED_AS_ROLLED_BACK"]
    # An approved release is the approval of the next apply (docs/semantics.md §5: "so the next run applies").
    assert next_action(change) == "APPLY"
    expires_at = ChangeRequest.objects.get(pk=release.pk).expires_at
    ChangeRequest.objects.filter(pk=release.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert next_action(change) == "AWAITING_APPROVAL"
    ChangeRequest.objects.filter(pk=release.pk).update(expires_at=expires_at)

    assert results_of(run_pipeline(actor=eng.actor)) == {change: "APPLIED"}
    assert AuditEntry.objects.filter(change_id=change, state="APPLIED").order_by("id").last().details["approval"]["request_id"] == release.pk


def results_of(run: Run) -> dict[str, str]:
    return {row["change_id"]: row["result"] for row in run.results}


def test_an_approval_for_an_older_checksum_does_not_let_the_edited_change_run(make_pipeline, unique, people, staging):
    change, table = f"edited-{unique}", f"ed_{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table)}})
    policy("app-db", "staging", 1)
    eng, alice = people["eng"], people["alice"]
    old = submit(Kind.APPLY, change, eng).request
    services.request_approve(request_id=old.pk, actor=alice.actor)
    assert next_action(change) == "APPLY"

    edited = make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: edited after approval\n")}})

    item = services.pipeline_plan().item(change)
    assert item.action.value == "AWAITING_APPROVAL"
    assert item.reason.startswith(f"the approval of request #{old.pk} covers checksum {old.checksum[:12]}")
    assert results_of(run_pipeline(actor=eng.actor)) == {change: "AWAITING_APPROVAL"}
    assert not table_exists(table)
    old.refresh_from_db()
    assert old.status == Status.APPROVED and old.run_id is None

    # A request made for the edited code, edited again before it is approved: the approval is refused.
    newer = submit(Kind.APPLY, change, eng).request
    assert newer.checksum == edited.by_id[change].checksum
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: edited twice\n")}})
    before = snapshot()
    with pytest.raises(services.RequestStale, match="the change was edited after the request"):
        services.request_approve(request_id=newer.pk, actor=alice.actor)
    assert snapshot() == before

    # Requesting again supersedes the stale pending request.
    newest = submit(Kind.APPLY, change, eng).request
    newer.refresh_from_db()
    assert (newer.status, newer.status_reason) == (Status.EXPIRED, "superseded by a new request")
    services.request_approve(request_id=newest.pk, actor=alice.actor)
    assert results_of(run_pipeline(actor=eng.actor)) == {change: "APPLIED"}
    assert table_exists(table)


def test_an_accept_checksum_request_is_bound_to_both_the_recorded_and_the_new_checksum(make_pipeline, unique, people, staging):
    change, table = f"rebase-{unique}", f"rb_{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table)}})
    run_pipeline(actor=people["eng"].actor)
    recorded = AuditEntry.objects.get(change_id=change, state="APPLIED").checksum
    edited = make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: one\n")}})
    policy("app-db", "staging", 1)

    request = submit(Kind.ACCEPT_CHECKSUM, change, people["eng"]).request

    assert (request.recorded_checksum, request.checksum) == (recorded, edited.by_id[change].checksum)
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: two\n")}})
    before = snapshot()
    with pytest.raises(services.RequestStale):
        services.request_approve(request_id=request.pk, actor=people["alice"].actor, inline=True)
    assert snapshot() == before


def test_an_undo_request_is_refused_while_the_checksum_has_drifted(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: drifted\n")}})
    policy("app-db", "staging", 1)
    before = snapshot()

    with pytest.raises(services.ActionRefused, match="undo refused while the checksum has drifted"):
        submit(Kind.UNDO, change, people["eng"])

    assert snapshot() == before and table_exists(table)


def test_a_direct_call_of_an_acting_service_cannot_skip_the_approvals_a_policy_requires(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    before = snapshot()

    with pytest.raises(services.ActionRefused, match="approval policies govern app-db in staging: request this action instead"):
        services.change_undo(change_id=change, actor=people["eng"].actor, reason="no approvals please", source=UI)

    assert snapshot() == before and table_exists(table)


def test_an_undo_cascading_onto_a_governed_target_needs_its_approval_and_its_approvers(make_pipeline, unique, people, staging, journal):
    first, later = f"first-{unique}", f"later-{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(first, f"cas_{unique}"), "0002_n.py": journal_change(later, rollback="ok")}})
    run_pipeline(actor=people["eng"].actor)
    policy("journal", "staging", 1)  # app-db itself has no policy here
    db_approver = person("db-approver", APPROVER, approve=("app-db",))

    submitted = submit(Kind.UNDO, first, people["eng"])

    request = submitted.request
    assert submitted.run is None and (request.status, request.required_approvals, request.target_system.name) == (Status.PENDING, 1, "app-db")
    assert AuditEntry.objects.get(event="request.created").details["targets"] == ["journal", "app-db"]
    before = snapshot()
    with pytest.raises(PermissionRefused, match="db-approver may not approve requests on target system 'journal'"):
        services.request_approve(request_id=request.pk, actor=db_approver.actor, inline=True)
    assert snapshot() == before

    done = services.request_approve(request_id=request.pk, actor=people["alice"].actor, inline=True)

    assert done.status == Status.EXECUTED
    assert [r["change_id"] for r in done.run.results] == [later, first]
    assert not table_exists(f"cas_{unique}")


# -- one pending request per change and kind ------------------------------------------------------------


def test_one_pending_request_per_change_and_kind(make_pipeline, unique, people, staging):
    change, _ = f"pending-{unique}", None
    make_pipeline({"main": {"0001_t.yaml": table_change(change, f"pp_{unique}")}})
    policy("app-db", "staging", 1)
    first = submit(Kind.SKIP, change, people["eng"]).request
    other_kind = submit(Kind.APPLY, change, people["eng"]).request
    dave = person("dave", ENGINEER, operate=("app-db",))
    before = snapshot()

    with pytest.raises(services.RequestDuplicate, match=f"request #{first.pk} for the SKIP of {change} is already pending"):
        submit(Kind.SKIP, change, dave)

    assert snapshot() == before
    assert other_kind.status == Status.PENDING
    with pytest.raises(IntegrityError), transaction.atomic():
        ChangeRequest.objects.create(
            kind=Kind.SKIP,
            change_id=change,
            checksum=first.checksum,
            environment="staging",
            target_system=first.target_system,
            reason="race",
            requester_name="x",
            required_approvals=1,
            expires_at=first.expires_at,
        )


# -- expiry and cancellation ------------------------------------------------------------------------------


def test_requests_expire_and_an_expired_request_can_no_longer_be_decided(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    request = submit(Kind.UNDO, change, people["eng"]).request
    assert abs(request.expires_at - request.created_at - timedelta(hours=72)) < timedelta(minutes=1)
    ChangeRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = snapshot()

    with pytest.raises(services.RequestExpired, match=f"request #{request.pk} expired at"):
        services.request_approve(request_id=request.pk, actor=people["alice"].actor, inline=True)
    assert snapshot() == before

    assert requests_expire_task() == [request.pk]

    request.refresh_from_db()
    assert request.status == Status.EXPIRED
    entry = AuditEntry.objects.get(event="request.expired")
    assert (entry.actor, entry.change_id, entry.details["request_id"]) == ("service:request-expiry", change, request.pk)
    assert services.requests_expire() == []
    assert table_exists(table)


def test_an_approved_apply_request_stops_covering_its_change_when_it_expires(make_pipeline, unique, people, staging):
    change = f"late-{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, f"late_{unique}")}})
    policy("app-db", "staging", 1)
    request = submit(Kind.APPLY, change, people["eng"]).request
    services.request_approve(request_id=request.pk, actor=people["alice"].actor)
    assert next_action(change) == "APPLY"

    ChangeRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert next_action(change) == "AWAITING_APPROVAL"
    assert services.requests_expire() == [request.pk]
    assert ChangeRequest.objects.get(pk=request.pk).status == Status.EXPIRED


def test_the_expiry_task_is_a_default_schedule():
    from django_celery_beat.models import PeriodicTask

    assert DEFAULT_SCHEDULES["flamingock: expire requests"] == ("flamingock.requests_expire", 300)
    schedules_ensure()
    task = PeriodicTask.objects.get(name="flamingock: expire requests")
    assert (task.task, task.interval.every, task.interval.period) == ("flamingock.requests_expire", 300, "seconds")


def test_only_the_requester_cancels_a_request(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    request = submit(Kind.UNDO, change, people["eng"]).request
    others = [people["alice"], people["carol"], person("other-engineer", ENGINEER, operate=("app-db",)), person("root", superuser=True)]
    before = snapshot()

    for other in others:
        with pytest.raises(PermissionRefused, match="only its requester \\(eng\\) can"):
            services.request_cancel(request_id=request.pk, actor=other.actor)
    assert snapshot() == before

    cancelled = services.request_cancel(request_id=request.pk, actor=people["eng"].actor, comment="wrong change")

    assert (cancelled.status, cancelled.status_reason) == (Status.CANCELLED, "cancelled by eng: wrong change")
    entry = AuditEntry.objects.get(event="request.cancelled")
    assert (entry.actor, entry.reason, entry.details["request_id"]) == ("eng", "wrong change", request.pk)
    after = snapshot()
    with pytest.raises(services.RequestNotPending):
        services.request_cancel(request_id=request.pk, actor=people["eng"].actor)
    with pytest.raises(services.RequestNotPending):
        services.request_approve(request_id=request.pk, actor=people["alice"].actor, inline=True)
    assert snapshot() == after
    assert table_exists(table)


# -- bad input changes nothing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["empty reason", "blank reason", "unknown change", "decided request", "expired request", "unknown request", "empty comment", "no permission"],
)
def test_bad_input_changes_nothing(case, make_pipeline, unique, people, staging, journal):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    eng, alice, bob = people["eng"], people["alice"], people["bob"]
    decided = submit(Kind.UNDO, change, eng).request
    services.request_reject(request_id=decided.pk, actor=bob.actor)
    pending = submit(Kind.UNDO, change, eng).request
    if case == "expired request":
        # Its clock ran out; the expiry task has not passed yet.
        ChangeRequest.objects.filter(pk=pending.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    attempts = {
        "empty reason": lambda: submit(Kind.UNDO, change, eng, reason=""),
        "blank reason": lambda: submit(Kind.SKIP, change, eng, reason="   "),
        "unknown change": lambda: submit(Kind.UNDO, f"nope-{unique}", eng),
        "decided request": lambda: services.request_approve(request_id=decided.pk, actor=alice.actor, inline=True),
        "expired request": lambda: services.request_approve(request_id=pending.pk, actor=alice.actor, inline=True),
        "unknown request": lambda: services.request_reject(request_id=987654, actor=alice.actor),
        "empty comment": lambda: services.request_comment(request_id=pending.pk, actor=alice.actor, body="  "),
        "no permission": lambda: services.request_approve(request_id=pending.pk, actor=people["carol"].actor),
    }
    errors = {
        "empty reason": (services.RequestRefused, "a reason is required"),
        "blank reason": (services.RequestRefused, "a reason is required"),
        "unknown change": (services.NotFound, "no change"),
        "decided request": (services.RequestNotPending, "is REJECTED: only a pending request can be decided"),
        "expired request": (services.RequestExpired, "expired at"),
        "unknown request": (services.NotFound, "no request #987654"),
        "empty comment": (services.RequestRefused, "a comment cannot be empty"),
        "no permission": (PermissionRefused, "carol may not approve requests on target system 'app-db'"),
    }
    before = snapshot()
    journal_before = journal.entries()

    error, message = errors[case]
    with pytest.raises(error, match=message):
        attempts[case]()

    assert snapshot() == before
    assert table_exists(table)
    assert journal.entries() == journal_before


def test_the_command_line_refuses_bad_input_with_exit_two_and_changes_nothing(make_pipeline, unique, people, staging, monkeypatch):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", people["alice"].token)
    before = snapshot()

    results = {
        "not an id": cli("approve", "abc", "--json"),
        "unknown id": cli("reject", "424242", "--json"),
        "empty reason": cli("undo", change, "--reason", " ", "--json"),
        "unknown change": cli("skip", f"nope-{unique}", "--reason", "x", "--json"),
    }

    assert {name: result.code for name, result in results.items()} == dict.fromkeys(results, 2)
    assert results["unknown id"].json()["error"] == "no request #424242"
    assert "not a request id: 'abc'" in results["not an id"].err
    assert snapshot() == before and table_exists(table)


# -- comments and lists ----------------------------------------------------------------------------------


def test_comments_are_audited_and_only_people_concerned_may_comment(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    request = submit(Kind.UNDO, change, people["eng"]).request

    services.request_comment(request_id=request.pk, actor=people["alice"].actor, body="which release?")
    services.request_comment(request_id=request.pk, actor=people["eng"].actor, body="release 7")
    before = snapshot()
    with pytest.raises(PermissionRefused, match="carol may not comment"):
        services.request_comment(request_id=request.pk, actor=people["carol"].actor, body="I only look")
    assert snapshot() == before

    assert [(c.author_name, c.body) for c in request.comments.all()] == [("alice", "which release?"), ("eng", "release 7")]
    entries = AuditEntry.objects.filter(event="request.commented").order_by("id")
    assert [(e.actor, e.reason, e.change_id, e.details["request_id"]) for e in entries] == [
        ("alice", "which release?", change, request.pk),
        ("eng", "release 7", change, request.pk),
    ]


def test_lists_are_filtered_to_what_each_user_may_see_and_decide(make_pipeline, unique, people, staging, journal):
    table_id, _ = applied_table(make_pipeline, unique, people, stage="db")
    note = f"note-{unique}"
    make_pipeline({"db": {"0001_t.yaml": table_change(table_id, f"req_{unique}")}, "j": {"0001_n.py": journal_change(note)}})
    policy("app-db", "staging", 1)
    policy("journal", "staging", 1)
    eng = people["eng"]
    on_db = submit(Kind.UNDO, table_id, eng).request
    on_journal = submit(Kind.SKIP, note, eng).request
    journal_only = person("jo", operate=("journal",))
    journal_approver = person("ja", approve=("journal",))
    nobody = person("nobody")

    def visible(who):
        return sorted(services.requests_visible(actor=who.actor).values_list("pk", flat=True))

    def awaiting(who):
        return sorted(services.requests_awaiting(actor=who.actor).values_list("pk", flat=True))

    both = sorted([on_db.pk, on_journal.pk])
    assert {name: visible(who) for name, who in {**people, "jo": journal_only, "ja": journal_approver, "nobody": nobody}.items()} == {
        "eng": both,
        "alice": both,
        "bob": both,
        "carol": both,
        "jo": [on_journal.pk],
        "ja": [on_journal.pk],
        "nobody": [],
    }
    assert {name: awaiting(who) for name, who in {**people, "ja": journal_approver}.items()} == {
        "eng": [],
        "alice": both,
        "bob": both,
        "carol": [],
        "ja": [on_journal.pk],
    }
    services.request_approve(request_id=on_journal.pk, actor=journal_approver.actor, inline=True)
    assert awaiting(people["alice"]) == [on_db.pk]


def test_the_command_line_requests_approve_reject_and_cancel(make_pipeline, unique, people, staging, monkeypatch):
    change, table = applied_table(make_pipeline, unique, people)
    note = f"other-{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, f"req_{unique}"), "0002_o.yaml": table_change(note, f"o_{unique}")}})
    policy("app-db", "staging", 1)
    eng, alice = people["eng"].token, people["alice"].token

    monkeypatch.setenv("FLAMINGOCK_TOKEN", eng)
    requested = cli("undo", change, "--reason", "release 7 broke checkout")
    assert requested.code == 4
    request_id = int(requested.out.split()[1].lstrip("#").rstrip(":"))
    assert f"approve {request_id}" in requested.out
    skip = cli("skip", note, "--reason", "not here", "--json").json()
    assert cli("requests", "--awaiting-me", "--json").json() == []
    assert [r["id"] for r in cli("requests", "--mine", "--json").json()] == [skip["id"], request_id]
    assert cli("cancel", str(skip["id"]), "--json").json()["status"] == "CANCELLED"

    monkeypatch.setenv("FLAMINGOCK_TOKEN", alice)
    listed = cli("requests", "--awaiting-me", "--json").json()
    assert [(r["id"], r["kind"], r["change_id"], r["requester"], r["status"]) for r in listed] == [(request_id, "UNDO", change, "eng", "PENDING")]
    assert "UNDO" in cli("requests").out
    approved = cli("approve", str(request_id), "--comment", "ok", "--json")

    assert approved.code == 0, approved.out
    data = approved.json()
    assert (data["request_id"], data["kind"], data["status"], data["actor"]) == (request_id, "UNDO", "SUCCEEDED", "eng")
    assert not table_exists(table)
    assert cli("requests", "--awaiting-me", "--json").json() == []
    again = cli("reject", str(request_id), "--json")
    assert again.code == 2 and "is EXECUTED" in again.json()["error"]


# -- notifications --------------------------------------------------------------------------------------


def test_a_pending_request_mails_the_approvers_of_its_target_except_its_requester(make_pipeline, unique, people, staging, mailoutbox):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    everywhere = person("gabe")
    everywhere.user.user_permissions.add(*Permission.objects.filter(codename="approve_targetsystem"))
    person("root", superuser=True)
    person("silent", APPROVER, approve=("app-db",), email=False)
    person("journal-approver", APPROVER, approve=("journal",))
    requester = person("eng-root", superuser=True)  # a superuser requester is not told about their own request
    mailoutbox.clear()

    request = submit(Kind.UNDO, change, requester, reason="release 7").request

    assert sorted(message.to[0] for message in mailoutbox) == ["alice@example.com", "bob@example.com", "gabe@example.com", "root@example.com"]
    assert all(len(message.to) == 1 for message in mailoutbox)
    subject, body = mailoutbox[0].subject, mailoutbox[0].body
    assert subject == f"[flamingock staging] request #{request.pk} awaits your decision: Undo of {change}"
    assert "reason: release 7" in body and f"flamingock approve {request.pk}" in body


def test_no_mail_for_a_request_approved_automatically(make_pipeline, unique, people, staging, mailoutbox):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 0)
    mailoutbox.clear()

    submit(Kind.UNDO, change, people["eng"])

    assert mailoutbox == []


def test_a_failed_or_blocked_run_mails_the_operators_of_the_target_it_stopped_at(make_pipeline, unique, people, staging, journal, mailoutbox):
    broken, fine = f"broken-{unique}", f"fine-{unique}"
    make_pipeline({"j": {"0001_a.py": journal_change(broken, fail="disk full")}, "db": {"0001_t.yaml": table_change(fine, f"fine_{unique}")}})
    person("root", superuser=True)
    person("db-only", ENGINEER, operate=("app-db",))
    person("quiet", ENGINEER, operate=("journal",), email=False)
    mailoutbox.clear()

    failed = run_pipeline(actor=people["eng"].actor)

    assert failed.status == Run.Status.FAILED
    assert sorted(message.to[0] for message in mailoutbox) == ["eng@example.com", "root@example.com"]
    assert mailoutbox[0].subject == "[flamingock staging] pipeline run FAILED"
    assert f"{broken}: FAILED - disk full" in mailoutbox[0].body and str(failed.id) in mailoutbox[0].body
    mailoutbox.clear()

    blocked = run_pipeline(actor=people["eng"].actor)  # the failed change now needs a human

    assert blocked.status == Run.Status.BLOCKED
    assert sorted(message.to[0] for message in mailoutbox) == ["eng@example.com", "root@example.com"]
    assert mailoutbox[0].subject == "[flamingock staging] pipeline run BLOCKED"


def test_a_run_that_succeeds_mails_nobody(make_pipeline, unique, people, staging, mailoutbox):
    mailoutbox.clear()
    applied_table(make_pipeline, unique, people)

    assert mailoutbox == []


# -- execution on a worker -----------------------------------------------------------------------------


@pytest.mark.slow
def test_an_approved_request_is_executed_by_a_worker_under_the_lock(make_pipeline, unique, people, settings, journal, subprocess_env, tmp_path):
    environment = f"t-{unique}"
    settings.FLAMINGOCK_ENVIRONMENT = environment
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change, rollback="ok")}})
    run_pipeline(actor=people["eng"].actor)
    policy("journal", environment, 1)
    request = submit(Kind.UNDO, change, people["eng"]).request
    broker = Broker(unique)
    worker = Worker(f"approvals@{unique}", env=subprocess_env(**broker.env(), FLAMINGOCK_ENVIRONMENT=environment), log_dir=tmp_path / "workers")
    try:
        worker.start()
        wait_for(lambda: worker.ready, timeout=60, what="the worker")
        with broker.publishing():
            approved = services.request_approve(request_id=request.pk, actor=people["alice"].actor)
        assert approved.status == Status.APPROVED and approved.run.status == Run.Status.QUEUED

        wait_for(lambda: ChangeRequest.objects.get(pk=request.pk).status != Status.APPROVED, timeout=60, what="the request executed")
    finally:
        worker.stop()
        broker.cleanup(f"pipeline:{environment}")

    request.refresh_from_db()
    run = request.run
    assert (request.status, run.status, run.kind, run.actor) == (Status.EXECUTED, Run.Status.SUCCEEDED, Run.Kind.UNDO, "eng"), worker.log[-3000:]
    assert AuditEntry.objects.get(run_id=run.id, event="lock.acquired").pid == worker.pid
    assert [entry["op"] for entry in journal.entries()] == ["apply", "rollback"]
    assert AuditEntry.objects.get(change_id=change, state="ROLLED_BACK").details["approval"]["approved_by"] == ["alice"]
