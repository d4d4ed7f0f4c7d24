"""The admin's pages and forms (docs/admin.md): every action goes through a service and reports its
outcome; every form rejects bad input with a clear message and changes nothing (the audit head,
the row counts and the target's state are compared before and after)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.admin import changes as changes_admin
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN
from changes_app.models import ApprovalPolicy, ChangeRecord, ChangeRequest, Run
from changes_app.services import requests as request_service
from tests.support.governance import Person, chain_head, person, policy, snapshot
from tests.support.trails import journal_change, run_pipeline, sql_change, table_exists

pytestmark = pytest.mark.django_db(transaction=True)

Kind, Status = ChangeRequest.Kind, ChangeRequest.Status
ENVIRONMENT = "staging"


@dataclass
class World:
    """Three stages, one applied change on app-db, one on the journal, one failed (an issue); a
    policy of one approval on both target systems; a person per role and one with the ``operate``
    object permission on app-db only (no role)."""

    people: dict[str, Person]
    db_change: str
    db_table: str
    note: str
    broken: str
    pipeline_run: Run

    def client(self, who: str) -> Client:
        client = Client()
        client.force_login(self.people[who].user)
        return client

    def record(self, change_id: str) -> ChangeRecord:
        return ChangeRecord.objects.get(change_id=change_id)


def world_build(make_pipeline, unique: str, settings) -> World:
    settings.FLAMINGOCK_ENVIRONMENT = ENVIRONMENT
    db_change, table, note, broken = f"table-{unique}", f"adm_{unique}", f"note-{unique}", f"broken-{unique}"
    make_pipeline(
        {
            "db": {"0001_t.yaml": sql_change(db_change, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}")},
            "notes": {"0001_n.py": journal_change(note, rollback="ok")},
            "broken": {"0001_b.py": journal_change(broken, fail="the service said no")},
        }
    )
    people = {
        "compliance": person("compliance", COMPLIANCE_OFFICER),
        "engineer": person("engineer", ENGINEER, operate=("app-db", "journal")),
        "approver": person("approver", APPROVER, approve=("app-db", "journal")),
        "platform": person("platform", PLATFORM_ADMIN),
        "scoped": person("scoped", operate=("app-db",)),
    }
    first = run_pipeline(actor=people["engineer"].actor)
    assert first.status == Run.Status.FAILED, first.status_reason
    services.catalogue_sync()
    policy("app-db", ENVIRONMENT, 1)
    policy("journal", ENVIRONMENT, 1)
    return World(people, db_change, table, note, broken, first)


@pytest.fixture
def world(make_pipeline, unique, settings, journal) -> World:
    return world_build(make_pipeline, unique, settings)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def unchanged(world: World) -> dict:
    """Everything a refused form must leave as it was."""
    return {
        **snapshot(),
        "chain_head": chain_head(),
        "table": table_exists(world.db_table),
        "journal": services.pipeline_plan().item(world.note).latest_state,
    }


def act_url(kind: str, change_id: str) -> str:
    return reverse("admin:changes_app_changerecord_act", args=[kind, change_id])


def decide(world: World, who: str, request_id: int, decision: str, comment: str = ""):
    return world.client(who).post(reverse("admin:changes_app_changerequest_decide", args=[request_id]), {"decision": decision, "comment": comment})


def requested(world: World, kind: str = Kind.UNDO, change_id: str | None = None, who: str = "engineer") -> ChangeRequest:
    return services.request_submit(
        kind=kind, change_id=change_id or world.db_change, actor=world.people[who].actor, reason="bad release", source=Run.Source.UI
    ).request


# -- pages ---------------------------------------------------------------------------------------------


def test_dashboard_shows_issues_blocked_stages_failed_runs_requests_awaiting_me_the_lock_and_the_chart(world):
    request = requested(world)

    page = world.client("approver").get(reverse("admin:index")).content.decode()

    assert world.broken in page.split('id="flk-issues"')[1].split('id="flk-awaiting"')[0]
    assert f"#{request.pk} Undo {world.db_change}" in page
    assert "broken</strong> by " + world.broken in page
    assert str(world.pipeline_run.pk) in page.split('id="flk-failed"')[1]
    assert "Free." in page.split('id="flk-lock"')[1]
    assert "<rect" in page.split('id="flk-chart"')[1] and "FAILED" in page.split('id="flk-chart"')[1]


def test_change_list_shows_state_next_action_and_checksum_with_one_plan_per_page(world, django_assert_max_num_queries):
    client = world.client("engineer")
    client.get(reverse("admin:changes_app_changerecord_changelist"))  # warm caches (sessions, content types)
    with django_assert_max_num_queries(40):
        page = client.get(reverse("admin:changes_app_changerecord_changelist")).content.decode()
    row = page.split(world.db_change, 1)[1].split("</tr>")[0]
    assert "APPLIED" in row and "SKIP" in row and "matches" in row
    broken = page.split(world.broken, 1)[1].split("</tr>")[0]
    assert "FAILED" in broken and "MANUAL_INTERVENTION" in broken


def test_change_detail_shows_source_full_history_requests_results_and_the_operators_actions(world):
    request = requested(world)

    page = world.client("engineer").get(reverse("admin:changes_app_changerecord_change", args=[world.record(world.db_change).pk])).content.decode()

    assert "CREATE TABLE" in page
    assert "change.applied" in page and "request.created" in page
    assert f"#{request.pk} Undo" in page
    assert "APPLIED" in page.split("results")[-1]
    assert act_url(Kind.UNDO, world.db_change) in page


def test_change_detail_shows_the_newest_entries_and_links_the_rest_in_the_audit_trail(world, monkeypatch):
    requested(world)
    entries = list(AuditEntry.objects.filter(change_id=world.db_change).order_by("-id"))
    assert len(entries) >= 2
    monkeypatch.setattr(changes_admin, "HISTORY_SHOWN", 1)

    page = world.client("engineer").get(reverse("admin:changes_app_changerecord_change", args=[world.record(world.db_change).pk])).content.decode()

    trail = f"{reverse('admin:audit_app_auditentry_changelist')}?change_id={world.db_change}"
    more = f"{len(entries) - 1} older entr{'y' if len(entries) == 2 else 'ies'} in the audit trail"
    history = page.split('class="flk-history"', 1)[1].split("</ul>", 1)[0]
    story = page.split('id="flk-story"', 1)[1].split("</ol>", 1)[0]
    for part in (history, story):
        shown = [e for e in entries if reverse("admin:audit_app_auditentry_change", args=[e.pk]) + '"' in part]
        assert shown == entries[:1]
        assert trail in part and more in part
    steps = [chunk.split('"', 1)[0] for chunk in story.split('data-step="')[1:]]
    assert steps[:2] == ["catalogued", "earlier"]


def test_undo_confirmation_lists_the_whole_cascade_then_creates_the_request(world, make_pipeline):
    client = world.client("engineer")
    url = act_url(Kind.UNDO, world.db_change)

    form = client.post(url, {"reason": "bad release"})
    assert form.status_code == 200 and 'id="flk-confirm"' in form.content.decode()
    assert world.db_change in form.content.decode().split('id="flk-cascade"')[1]
    assert not ChangeRequest.objects.exists()

    done = client.post(url, {"reason": "bad release", "confirm": "yes"})

    request = ChangeRequest.objects.get()
    assert (request.kind, request.status, request.requester_name, request.reason) == (Kind.UNDO, Status.PENDING, "engineer", "bad release")
    assert done.url == reverse("admin:changes_app_changerequest_change", args=[request.pk])
    assert any("awaits 1 approval" in m for m in messages_of(done))


def test_approver_approves_in_the_admin_and_the_request_is_executed(world, settings, monkeypatch):
    ApprovalPolicy.objects.all().update(required_approvals=1)
    request = requested(world)
    # Executed in this process: the worker path is covered by the browser journey.
    original = request_service.request_execute

    def inline(*, request_id, inline=False):
        return original(request_id=request_id, inline=True)

    monkeypatch.setattr(request_service, "request_execute", inline)
    response = decide(world, "approver", request.pk, "approve", "go")

    request.refresh_from_db()
    assert request.status == Status.EXECUTED and not table_exists(world.db_table)
    assert any("your approval is recorded" in m for m in messages_of(response))


def test_self_approval_is_refused_for_a_superuser_too_with_the_services_message(world):
    boss = person("boss", superuser=True)
    request = services.request_submit(kind=Kind.UNDO, change_id=world.db_change, actor=boss.actor, reason="mine", source=Run.Source.UI).request
    before = unchanged(world)
    client = Client()
    client.force_login(boss.user)

    response = client.post(reverse("admin:changes_app_changerequest_decide", args=[request.pk]), {"decision": "approve"})

    assert response.status_code == 302
    assert any("nobody decides their own request" in m for m in messages_of(response))
    assert unchanged(world) == before


def test_requester_cancels_and_comments_in_the_admin(world):
    request = requested(world)

    commented = decide(world, "engineer", request.pk, "comment", "please hurry")
    cancelled = decide(world, "engineer", request.pk, "cancel", "changed my mind")

    request.refresh_from_db()
    assert request.status == Status.CANCELLED and request.comments.get().body == "please hurry"
    assert any("Comment added" in m for m in messages_of(commented)) and any("cancelled" in m for m in messages_of(cancelled))


def test_awaiting_my_decision_filter_lists_only_requests_i_may_decide(world):
    mine = requested(world)
    link = reverse("admin:changes_app_changerequest_change", args=[mine.pk])
    awaiting = reverse("admin:changes_app_changerequest_changelist") + "?awaiting=me"
    assert link in world.client("approver").get(awaiting).content.decode()
    assert link not in world.client("engineer").get(awaiting).content.decode()
    assert link in world.client("engineer").get(reverse("admin:changes_app_changerequest_changelist")).content.decode()


def test_issues_page_shows_error_guidance_and_fix_forms_that_go_to_a_confirmation(world):
    client = world.client("engineer")
    page = client.get(reverse("admin:changes_app_changerecord_issues")).content.decode()
    assert "the service said no" in page and "Guidance" in page and "fix " + world.broken in page
    assert act_url(Kind.MARK_ROLLED_BACK, world.broken) in page

    confirm = client.post(act_url(Kind.MARK_ROLLED_BACK, world.broken), {"reason": "nothing was written"})
    assert 'id="flk-confirm"' in confirm.content.decode()


def test_run_page_polls_a_progress_endpoint_and_shows_errors_readably(world):
    client = world.client("engineer")
    run = world.pipeline_run
    page = client.get(reverse("admin:changes_app_run_change", args=[run.pk])).content.decode()
    assert reverse("admin:changes_app_run_progress", args=[run.pk]) in page
    assert "the service said no" in page.split('id="flk-results"')[1]
    progress = client.get(reverse("admin:changes_app_run_progress", args=[run.pk])).json()
    assert progress["status"] == "FAILED" and progress["finished"] is True and progress["progress_done"] >= 1


def test_platform_admin_sets_a_policy_through_the_service_and_it_is_audited(world):
    from changes_app.models import TargetSystem

    app_db = TargetSystem.objects.get(name="app-db")
    response = world.client("platform").post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]),
        {"environment": ENVIRONMENT, "required_approvals": "2", "reason": "two eyes on app-db"},
    )
    assert ApprovalPolicy.objects.get(target_system=app_db, environment=ENVIRONMENT).required_approvals == 2
    assert AuditEntry.objects.get(event="policy.changed").details["required_approvals"] == 2
    assert any("Policy saved" in m for m in messages_of(response))


def test_target_configuration_is_read_only_and_shows_the_policy_and_permission_screens_to_platform_admins(world):
    from changes_app.models import TargetSystem

    app_db = TargetSystem.objects.get(name="app-db")
    page = world.client("platform").get(reverse("admin:changes_app_targetsystem_change", args=[app_db.pk])).content.decode()
    assert 'name="_save"' not in page and 'id="flk-policy-form"' in page
    assert reverse("admin:changes_app_targetsystem_permissions", args=[app_db.pk]) in page
    assert world.client("platform").get(reverse("admin:changes_app_targetsystem_permissions", args=[app_db.pk])).status_code == 200
    page = world.client("engineer").get(reverse("admin:changes_app_targetsystem_change", args=[app_db.pk])).content.decode()
    assert 'id="flk-policy-form"' not in page and "/permissions/" not in page


# -- bad input changes nothing --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   \n  "])
def test_an_empty_reason_is_refused_and_changes_nothing(world, reason):
    before = unchanged(world)
    response = world.client("engineer").post(act_url(Kind.UNDO, world.db_change), {"reason": reason, "confirm": "yes"})
    assert response.status_code == 200 and "A reason is required." in response.content.decode()
    assert unchanged(world) == before


def test_an_unknown_change_is_refused_and_changes_nothing(world):
    before = unchanged(world)
    response = world.client("engineer").post(act_url(Kind.UNDO, "no-such-change"), {"reason": "x", "confirm": "yes"})
    assert response.status_code == 302 and any("No change no-such-change" in m for m in messages_of(response))
    assert unchanged(world) == before


def test_an_unknown_action_is_refused_and_changes_nothing(world):
    before = unchanged(world)
    response = world.client("engineer").post(act_url("EXPLODE", world.db_change), {"reason": "x", "confirm": "yes"})
    assert response.status_code == 302 and any("Unknown action EXPLODE" in m for m in messages_of(response))
    assert unchanged(world) == before


def test_an_action_the_state_does_not_allow_is_refused_with_the_services_message_and_changes_nothing(world):
    before = unchanged(world)
    response = world.client("engineer").post(act_url(Kind.REAPPLY, world.db_change), {"reason": "x", "confirm": "yes"})
    assert response.status_code == 302 and messages_of(response)
    assert unchanged(world) == before


def test_deciding_a_decided_request_is_refused_and_changes_nothing(world):
    request = requested(world)
    decide(world, "approver", request.pk, "reject", "no")
    before = unchanged(world)

    response = decide(world, "approver", request.pk, "approve")

    assert any("only a pending request can be decided" in m for m in messages_of(response))
    assert unchanged(world) == before


def test_deciding_an_expired_request_is_refused_and_changes_nothing(world):
    request = requested(world)
    ChangeRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(minutes=1))  # test setup: time passes
    before = unchanged(world)

    response = decide(world, "approver", request.pk, "approve")

    assert any(f"request #{request.pk} expired" in m for m in messages_of(response))
    assert unchanged(world) == before


def test_an_unknown_request_is_refused_and_changes_nothing(world):
    before = unchanged(world)
    response = decide(world, "approver", 999999, "approve")
    assert any("No request #999999" in m for m in messages_of(response))
    assert unchanged(world) == before


@pytest.mark.parametrize(
    ("environment", "required", "message"),
    [
        ("", "1", "environment: This field is required."),
        ("staging", "-1", "required_approvals"),
        ("staging", "many", "required_approvals"),
        ("prod", "0", "protected"),
    ],
)
def test_a_bad_policy_is_refused_and_changes_nothing(world, environment, required, message):
    from changes_app.models import TargetSystem

    app_db = TargetSystem.objects.get(name="app-db")
    before = unchanged(world)
    response = world.client("platform").post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]),
        {"environment": environment, "required_approvals": required, "reason": "tighten"},
    )
    assert any(message in m for m in messages_of(response)), messages_of(response)
    assert unchanged(world) == before


def test_releasing_the_lock_without_a_reason_or_when_it_is_free_is_refused_and_changes_nothing(world):
    before = unchanged(world)
    client = world.client("platform")
    empty = client.post(reverse("admin:changes_app_run_lock"), {"reason": ""})
    free = client.post(reverse("admin:changes_app_run_lock"), {"reason": "stale"})
    assert "A reason is required." in empty.content.decode()
    assert any("the lock is not held" in m for m in messages_of(free))
    assert unchanged(world) == before
