"""Break-glass (docs/break-glass.md, docs/semantics.md "Break-glass"): a holder of ``break_glass``
acts without prior approval; the use is the approval, bound to the change's id, checksum and
environment; it writes ``break_glass.used`` and opens a REVIEW that two other people must approve in
time; a late review writes ``review.overdue`` once; nobody reviews their own use; bad input and
refused people change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.permissions import PermissionRefused, SelfDecisionRefused
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER
from changes_app.models import ChangeRequest, Run, TargetSystem
from changes_app.services.break_glass import BreakGlass, BreakGlassInvalid, break_glass_of, reviews_open, reviews_overdue
from changes_app.services.schedules import DEFAULT_SCHEDULES
from changes_app.tasks import reviews_overdue_task
from tests.support.governance import events, last_entry_id, person, policy, snapshot
from tests.support.trails import run_pipeline, sql_change, table_exists

pytestmark = pytest.mark.django_db(transaction=True)

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status
UI = Run.Source.UI
INCIDENT = "INC-4711"


@pytest.fixture
def staging(settings):
    """A governed environment: staging with a policy of one approval on app-db."""
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    return "staging"


def break_glass_grant(who, *targets: str) -> None:
    for name in targets:
        assign_perm("changes_app.break_glass", who.user, TargetSystem.objects.get(name=name))


@pytest.fixture
def people(targets):
    """An on-call engineer who holds break-glass on app-db, one who does not, three approvers, and a
    compliance officer who was (wrongly) given the permission."""
    oncall = person("oncall", ENGINEER, operate=("app-db",), approve=("app-db",))
    break_glass_grant(oncall, "app-db")
    carol = person("carol", COMPLIANCE_OFFICER, operate=("app-db",))
    break_glass_grant(carol, "app-db")
    return {
        "oncall": oncall,
        "eng": person("eng", ENGINEER, operate=("app-db",)),
        "alice": person("alice", APPROVER, approve=("app-db",)),
        "bob": person("bob", APPROVER, approve=("app-db",)),
        "dave": person("dave", APPROVER, approve=("app-db",)),
        "carol": carol,
    }


def applied_table(make_pipeline, unique, people) -> tuple[str, str]:
    change, table = f"bg-{unique}", f"bg_{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}")}})
    assert run_pipeline(actor=people["eng"].actor).status == Run.Status.SUCCEEDED
    return change, table


def emergency(kind, change_id, who, reason="db on fire, rolling back release 7", incident=INCIDENT, inline=True):
    return services.request_submit(
        kind=kind,
        change_id=change_id,
        actor=who.actor,
        reason="",
        source=UI,
        inline=inline,
        break_glass=break_glass_of(reason=reason, incident=incident),
    )


# -- the use -----------------------------------------------------------------------------------------


def test_an_emergency_undo_runs_at_once_as_a_bound_approval_and_opens_a_review(make_pipeline, unique, people, staging, mailoutbox):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    since = last_entry_id()

    submitted = emergency(Kind.UNDO, change, people["oncall"])

    request, run = submitted.request, submitted.run
    assert (request.status, request.break_glass, request.incident, request.requester_name) == (Status.EXECUTED, True, INCIDENT, "oncall")
    assert run.status == Run.Status.SUCCEEDED and not table_exists(table)
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)
    assert (review.status, review.required_approvals, review.reviewed_request_id, review.requester_name) == (Status.PENDING, 2, request.pk, "oncall")
    assert review.due_at - timezone.now() == pytest.approx(timedelta(hours=72), abs=timedelta(minutes=1))
    assert events(since=since, change_id=change)[:4] == [
        ("request.created", "oncall"),
        ("request.approved", "oncall"),
        ("request.created", "oncall"),
        ("break_glass.used", "oncall"),
    ]
    used = AuditEntry.objects.get(event="break_glass.used")
    assert used.actor == "oncall" and used.environment == "staging"
    assert used.details == {
        "action": "UNDO",
        "change_id": change,
        "checksum": request.checksum,
        "environment": "staging",
        "reason": "db on fire, rolling back release 7",
        "incident": INCIDENT,
        "review_request_id": review.pk,
        "run_id": str(run.id),
    }
    approved = AuditEntry.objects.get(event="request.approved", change_id=change)
    assert approved.actor == "oncall" and approved.details["break_glass"] is True and approved.details["request_id"] == request.pk
    # The run carries the approval as any approved request's run does, marked as break-glass.
    rolled_back = AuditEntry.objects.get(change_id=change, state="ROLLED_BACK")
    assert rolled_back.details["approval"] == {
        "request_id": request.pk,
        "kind": "UNDO",
        "checksum": request.checksum,
        "required": 1,
        "approved_by": ["oncall"],
        "automatic": False,
        "break_glass": True,
        "incident": INCIDENT,
    }
    # The reviewers hear of the review, the person who used it does not review it.
    review_mail = [m for m in mailoutbox if f"request #{review.pk}" in m.subject]
    assert sorted(m.to[0] for m in review_mail) == ["alice@example.com", "bob@example.com", "dave@example.com"]


def test_an_emergency_apply_is_an_approved_apply_request_that_the_resolver_gate_lets_through(make_pipeline, unique, people, staging):
    policy("app-db", "staging", 1)
    change, table = f"bg-{unique}", f"bg_{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}")}})
    assert run_pipeline(actor=people["eng"].actor).status == Run.Status.AWAITING_APPROVAL

    submitted = emergency(Kind.APPLY, change, people["oncall"])

    assert submitted.run is None and submitted.request.status == Status.APPROVED and submitted.request.break_glass
    used = AuditEntry.objects.get(event="break_glass.used")
    assert used.details["action"] == "APPLY" and "run_id" not in used.details
    assert run_pipeline(actor=people["oncall"].actor).status == Run.Status.SUCCEEDED and table_exists(table)
    applied = AuditEntry.objects.get(change_id=change, state="APPLIED")
    assert applied.details["approval"]["break_glass"] is True and applied.details["approval"]["approved_by"] == ["oncall"]
    submitted.request.refresh_from_db()
    assert submitted.request.status == Status.EXECUTED


def test_an_emergency_skip_is_performed_and_reviewed_like_an_undo(make_pipeline, unique, people, staging):
    policy("app-db", "staging", 1)
    change = f"bg-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE bg_{unique} (id integer)", f"DROP TABLE bg_{unique}")}})

    submitted = emergency(Kind.SKIP, change, people["oncall"])

    assert submitted.run.status == Run.Status.SUCCEEDED and submitted.request.status == Status.EXECUTED
    assert ChangeRequest.objects.filter(kind=Kind.REVIEW, reviewed_request=submitted.request).count() == 1


# -- refusals: nothing changes -------------------------------------------------------------------------


def test_without_the_break_glass_permission_the_use_is_refused_recorded_and_changes_nothing(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    before = snapshot()

    with pytest.raises(PermissionRefused, match="eng may not use break-glass on target system 'app-db'"):
        emergency(Kind.UNDO, change, people["eng"])

    assert snapshot() == before and table_exists(table)
    refused = AuditEntry.objects.get(event="access.refused")
    assert refused.details["reason"] == "permission" and refused.details["object"] == f"change {change}"


def test_a_compliance_officer_never_uses_break_glass_even_when_granted(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    before = snapshot()

    with pytest.raises(PermissionRefused, match="compliance officers never use break-glass"):
        emergency(Kind.UNDO, change, people["carol"])

    assert snapshot() == before and table_exists(table)


@pytest.mark.parametrize(
    ("reason", "incident", "message"),
    [
        ("", INCIDENT, "needs a reason"),
        ("   ", INCIDENT, "needs a reason"),
        ("fire", "", "needs an incident reference"),
        ("x" * 2001, INCIDENT, "longer than 2000"),
        ("fire\x00", INCIDENT, "control characters"),
        ("fire", "INC\n1", "incident reference must be"),
        ("fire", "I" * 201, "incident reference must be"),
        ("fire", "<script>", "incident reference must be"),
    ],
)
def test_a_use_without_a_usable_reason_or_incident_is_refused_before_anything(reason, incident, message):
    with pytest.raises(BreakGlassInvalid, match=message):
        break_glass_of(reason=reason, incident=incident)


def test_a_reason_typed_on_several_lines_in_the_admin_is_accepted_as_lines():
    # A browser sends a textarea's line breaks as CRLF; a bare carriage return stays refused.
    used = break_glass_of(reason="db down\r\nfailing over to the replica", incident=INCIDENT)
    assert used.reason == "db down\nfailing over to the replica"
    with pytest.raises(BreakGlassInvalid, match="control characters"):
        break_glass_of(reason="db down\rgone", incident=INCIDENT)


def test_reason_and_incident_pass_the_redaction_of_typed_text(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)

    emergency(Kind.UNDO, change, people["oncall"], reason="outage; password=hunter2hunter2 leaked in the runbook")

    for entry in AuditEntry.objects.filter(change_id=change):
        assert "hunter2hunter2" not in str(entry.details) and "hunter2hunter2" not in entry.reason
    assert "hunter2hunter2" not in ChangeRequest.objects.get(kind=Kind.REVIEW).reason


def test_break_glass_is_refused_where_no_approval_governs_the_action(make_pipeline, unique, people, staging):
    change, table = applied_table(make_pipeline, unique, people)
    before = snapshot()

    with pytest.raises(services.PolicyInvalid, match="perform the action without break-glass"):
        emergency(Kind.UNDO, change, people["oncall"])

    assert snapshot() == before and table_exists(table)


def test_a_review_cannot_be_requested_directly_nor_break_glass_used_for_it(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    before = snapshot()

    with pytest.raises(BreakGlassInvalid, match="does not apply to REVIEW"):
        services.request_create(kind=Kind.REVIEW, change_id=change, actor=people["oncall"].actor, reason="x", break_glass=BreakGlass("x", INCIDENT))
    with pytest.raises(services.RequestRefused, match="unknown request kind"):
        services.request_create(kind=Kind.REVIEW, change_id=change, actor=people["oncall"].actor, reason="x")

    assert snapshot() == before


# -- the review ------------------------------------------------------------------------------------------


def test_two_other_people_must_approve_the_review_and_its_user_may_neither_approve_nor_withdraw_it(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    emergency(Kind.UNDO, change, people["oncall"])
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)
    before = snapshot()

    with pytest.raises(SelfDecisionRefused, match="nobody decides their own request"):
        services.request_approve(request_id=review.pk, actor=people["oncall"].actor)
    with pytest.raises(PermissionRefused, match="may not withdraw break-glass review"):
        services.request_cancel(request_id=review.pk, actor=people["oncall"].actor)
    with pytest.raises(PermissionRefused, match="may not approve requests"):
        services.request_approve(request_id=review.pk, actor=people["eng"].actor)
    assert snapshot() == before
    assert AuditEntry.objects.filter(event="access.refused", details__reason="self_decision").count() == 1

    assert services.request_approve(request_id=review.pk, actor=people["alice"].actor, comment="right call").status == Status.PENDING
    with pytest.raises(services.RequestRefused, match="already decided"):
        services.request_approve(request_id=review.pk, actor=people["alice"].actor)
    done = services.request_approve(request_id=review.pk, actor=people["bob"].actor, comment="agreed")

    assert done.status == Status.APPROVED and done.run_id is None
    decisions = list(AuditEntry.objects.filter(event="request.approved", details__request_id=review.pk).order_by("id"))
    assert [(e.actor, e.details["approvals"], e.details["required"], e.details["final"]) for e in decisions] == [
        ("alice", 1, 2, False),
        ("bob", 2, 2, True),
    ]
    assert review.pk not in [r.pk for r in services.requests_awaiting(actor=people["dave"].actor)]


def test_a_review_needs_two_approvals_even_where_the_policy_needs_none(make_pipeline, unique, people, staging):
    """Protected environments need one at least; the review needs two whatever the policy."""
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    emergency(Kind.UNDO, change, people["oncall"])
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)

    assert services.request_approve(request_id=review.pk, actor=people["alice"].actor).status == Status.PENDING
    assert review.required_approvals == 2


def test_one_rejection_ends_the_review_as_rejected(make_pipeline, unique, people, staging):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    emergency(Kind.UNDO, change, people["oncall"])
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)

    assert services.request_reject(request_id=review.pk, actor=people["alice"].actor, comment="no incident").status == Status.REJECTED


def test_a_late_review_writes_review_overdue_once_notifies_and_can_still_be_approved(make_pipeline, unique, people, staging, settings, mailoutbox):
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 1)
    emergency(Kind.UNDO, change, people["oncall"])
    review = ChangeRequest.objects.get(kind=Kind.REVIEW)
    assert reviews_overdue() == []

    later = review.due_at + timedelta(minutes=1)
    mailoutbox.clear()
    assert reviews_overdue(now=later) == [review.pk]
    assert reviews_overdue(now=later + timedelta(hours=1)) == []
    assert reviews_overdue_task() == []

    overdue = AuditEntry.objects.get(event="review.overdue")
    assert overdue.details == {"review_request_id": review.pk, "change_id": change, "due_at": review.due_at.isoformat()}
    assert overdue.actor == "service:break-glass-review"
    assert sorted(m.to[0] for m in mailoutbox) == ["alice@example.com", "bob@example.com", "dave@example.com", "oncall@example.com"]
    assert all("OVERDUE" in m.subject for m in mailoutbox)
    # The expiry task leaves reviews alone; the listing shows it overdue.
    ChangeRequest.objects.filter(pk=review.pk).update(due_at=timezone.now() - timedelta(minutes=1), expires_at=timezone.now() - timedelta(minutes=1))
    assert review.pk not in services.requests_expire()
    in_time, late = reviews_open(requests=ChangeRequest.objects.all())
    assert [r.pk for r in late] == [review.pk] and not in_time.exists()
    assert review.pk in [r.pk for r in services.requests_awaiting(actor=people["alice"].actor)]
    services.request_approve(request_id=review.pk, actor=people["alice"].actor)
    assert services.request_approve(request_id=review.pk, actor=people["bob"].actor).status == Status.APPROVED


def test_the_overdue_check_is_a_default_schedule():
    assert DEFAULT_SCHEDULES["flamingock: overdue break-glass reviews"] == ("flamingock.reviews_overdue", 300)
