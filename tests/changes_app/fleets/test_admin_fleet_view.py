"""The fleet view in the admin (docs/fleet.md, "The fleet view"): the list and one fleet run's page
(per-wave progress, the members × changes matrix with counts per change, the member filter, each
failed or blocked member's issues with their guidance), its live progress, cancel / resume / retry
confirmed first and offered only to operators of the group, the dashboard's card, and the same data
over the API. Rows are written directly: these tests are about what the pages show and who may act."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry, MemberChangeState
from changes_app.conf import current_environment
from changes_app.fleets import services as fleets
from changes_app.governance.roles import ENGINEER
from changes_app.models import ChangeRequest, FleetMemberRun, FleetRun, Run, TargetSystem
from changes_app.pipeline.discovery import pipeline_load
from tests.changes_app.api.conftest import client_for
from tests.changes_app.fleets.conftest import group_change
from tests.support.governance import Person, person, policy

pytestmark = pytest.mark.django_db(transaction=True)

M = FleetMemberRun.Status
CREATE, INDEX = "fleet-view-create", "fleet-view-index"
RUN_PAGE = re.compile(r"/admin/changes_app/run/[0-9a-f-]{36}/change/")


@dataclass
class World:
    create: str
    index: str
    people: dict[str, Person]

    def client(self, who: str) -> Client:
        client = Client()
        client.force_login(self.people[who].user)
        return client


@pytest.fixture
def world(group_targets, make_pipeline, settings) -> World:
    """A group ``tenants`` with two changes, a group ``others``; people: an engineer operating
    ``tenants``, a viewer of ``tenants`` (no operate), a viewer of ``others`` only, a staff user with
    no permission at all."""
    configured = group_targets({"schemas": ["t_00"]})
    configured["others"] = {"kind": "postgres", "dsn_env": "FLAMINGOCK_TEST_TARGET_DSN", "group": {"schemas": ["o_00"]}}
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change(CREATE, "CREATE TABLE a (id integer)"),
                "0002_index.py": group_change(INDEX, "CREATE INDEX a_id ON a (id)"),
            }
        }
    )
    people = {
        "operator": person("fleet-operator", ENGINEER, operate=("tenants",)),
        "viewer": person("fleet-viewer"),
        "stranger": person("fleet-stranger"),
        "nobody": person("fleet-nobody"),
    }
    assign_perm("changes_app.view_targetsystem", people["viewer"].user, TargetSystem.objects.get(name="tenants"))
    assign_perm("changes_app.view_targetsystem", people["stranger"].user, TargetSystem.objects.get(name="others"))
    return World(create=CREATE, index=INDEX, people=people)


def fleet_make(*, members: dict[str, tuple[str, int]], target: str = "tenants", status=FleetRun.Status.RUNNING, wave: int = 1, **fields) -> FleetRun:
    """A fleet run with ``members``: name -> (status, wave); a failed member gets a failed child run."""
    pipeline = pipeline_load()
    checksums = {change.id: change.checksum for stage in pipeline.stages for change in stage.changes if change.target == target}
    fleet = FleetRun.objects.create(
        target=target, environment=current_environment(), source="UI", actor="fleet-operator", checksums=checksums, wave=wave, status=status, **fields
    )
    for name, (member_status, member_wave) in members.items():
        run = None
        if member_status in (M.FAILED, M.RUNNING, M.SUCCEEDED):
            run_status = {M.FAILED: Run.Status.FAILED, M.RUNNING: Run.Status.RUNNING, M.SUCCEEDED: Run.Status.SUCCEEDED}[member_status]
            run = Run.objects.create(
                source="UI",
                environment=fleet.environment,
                actor="fleet-operator",
                status=run_status,
                status_reason="fleet-view-create failed" if member_status == M.FAILED else "",
                results=[{"change_id": CREATE, "result": "FAILED", "reason": "", "error": f"relation on {name} exploded"}]
                if member_status == M.FAILED
                else [],
            )
        FleetMemberRun.objects.create(fleet_run=fleet, member=name, wave=member_wave, status=member_status, run=run, attempts=1 if run else 0)
    return fleet


def state_set(member: str, change_id: str, state: str, checksum: str = "", target: str = "tenants") -> None:
    MemberChangeState.objects.create(member=member, change_id=change_id, state=state, checksum=checksum, entry_id=1, target=target)


def page_url(fleet: FleetRun, **query) -> str:
    url = reverse("admin:changes_app_fleetrun_change", args=[fleet.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def members_shown(response) -> list[str]:
    html = response.content.decode()
    return sorted(name for name in ("t_00", "t_01", "t_02", "t_03", "t_04") if f'data-member="{name}" data-status' in html)


def mixed_fleet(**fields) -> FleetRun:
    """t_00 canary succeeded; wave 1: t_01 succeeded, t_02 failed, t_03 blocked, t_04 running."""
    fleet = fleet_make(
        members={"t_00": (M.SUCCEEDED, 0), "t_01": (M.SUCCEEDED, 1), "t_02": (M.FAILED, 1), "t_03": (M.FAILED, 1), "t_04": (M.RUNNING, 1)}, **fields
    )
    blocked = FleetMemberRun.objects.get(fleet_run=fleet, member="t_03")
    Run.objects.filter(pk=blocked.run_id).update(status=Run.Status.BLOCKED, status_reason="stage main is held", results=[])
    for name in ("t_00", "t_01"):
        state_set(name, CREATE, "APPLIED", "x")
    state_set("t_02", CREATE, "FAILED")
    return fleet


# -- who sees and who acts --------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in_and_learns_nothing(world):
    fleet = mixed_fleet()

    for url in (page_url(fleet), reverse("admin:changes_app_fleetrun_progress", args=[fleet.pk]), reverse("admin:changes_app_fleetrun_changelist")):
        response = Client().get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    refused = Client().post(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"]), {"confirm": "yes"})

    assert refused.status_code == 302 and "/login/" in refused["Location"]
    assert FleetRun.objects.get(pk=fleet.pk).cancel_requested_at is None


def test_a_person_who_sees_no_target_system_is_refused_the_fleet_pages(world):
    fleet = mixed_fleet()
    client = world.client("nobody")

    assert client.get(reverse("admin:changes_app_fleetrun_changelist")).status_code == 403
    assert client.get(page_url(fleet)).status_code == 403
    assert client.get(reverse("admin:changes_app_fleetrun_progress", args=[fleet.pk])).status_code == 404


def test_a_fleet_run_of_a_group_one_cannot_see_is_absent_and_the_look_is_recorded(world):
    fleet, theirs = mixed_fleet(), fleet_make(members={"o_00": (M.SUCCEEDED, 0)}, target="others")
    client = world.client("stranger")

    listed = client.get(reverse("admin:changes_app_fleetrun_changelist"))
    page = client.get(page_url(fleet), follow=True)
    cancel = client.post(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"]), {"confirm": "yes"})

    assert listed.status_code == 200
    assert str(theirs.pk)[:8] in listed.content.decode() and str(fleet.pk)[:8] not in listed.content.decode()
    assert page.redirect_chain[-1][0] == reverse("admin:index")
    assert "doesn’t exist" in " ".join(str(m) for m in get_messages(page.wsgi_request))
    assert cancel.status_code == 302
    assert FleetRun.objects.get(pk=fleet.pk).cancel_requested_at is None
    assert client.get(reverse("admin:changes_app_fleetrun_progress", args=[fleet.pk])).status_code == 404
    assert AuditEntry.objects.filter(event="access.refused", actor="fleet-stranger", details__reason="not_visible").exists()


def test_a_viewer_sees_the_page_without_buttons_and_is_refused_every_action(world):
    fleet = mixed_fleet()
    client = world.client("viewer")

    page = client.get(page_url(fleet))
    html = page.content.decode()

    assert page.status_code == 200
    assert 'id="flk-fleet-matrix"' in html and 'id="flk-fleet-actions"' not in html and "flk-fleet-cancel" not in html
    # Child runs name no change: a viewer of the group alone gets no link to a run page they cannot open.
    assert not RUN_PAGE.search(html)
    for action in ("cancel", "resume", "retry"):
        url = reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, action])
        assert client.get(url).status_code == 403
        assert client.post(url, {"confirm": "yes"}).status_code == 403
    assert FleetRun.objects.get(pk=fleet.pk).cancel_requested_at is None
    assert not AuditEntry.objects.filter(event="run.cancel_requested").exists()


def test_an_operator_confirms_then_cancels_a_running_fleet_run(world):
    fleet = mixed_fleet()
    client = world.client("operator")
    url = reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"])

    page = client.get(page_url(fleet)).content.decode()
    confirm = client.get(url)
    unconfirmed = client.post(url, {})
    assert 'id="flk-fleet-cancel"' in page and "flk-fleet-retry" not in page
    assert RUN_PAGE.search(page)  # an engineer sees every run
    assert confirm.status_code == 200 and "What will happen" in confirm.content.decode()
    assert "The 1 member(s) queued or running stop" in confirm.content.decode()
    assert 'name="csrfmiddlewaretoken"' in confirm.content.decode()
    assert unconfirmed.status_code == 200 and FleetRun.objects.get(pk=fleet.pk).cancel_requested_at is None

    done = client.post(url, {"confirm": "yes"})

    fleet.refresh_from_db()
    assert done.status_code == 302 and done["Location"] == page_url(fleet)
    assert fleet.cancel_requested_at is not None and fleet.cancel_requested_by == "fleet-operator"
    assert AuditEntry.objects.filter(event="run.cancel_requested", actor="fleet-operator").count() == 1
    # The member under way is asked to stop; its fleet run ends when it does.
    running = FleetMemberRun.objects.get(fleet_run=fleet, member="t_04")
    assert Run.objects.get(pk=running.run_id).cancel_requested_at is not None


def test_an_operator_retries_the_failed_members_of_a_finished_fleet_run(world, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(fleets, "members_dispatch", lambda ids: sent.extend(ids))
    fleet = fleet_make(
        members={"t_00": (M.SUCCEEDED, 0), "t_01": (M.FAILED, 1), "t_02": (M.NOT_STARTED, 1)},
        status=FleetRun.Status.FINISHED,
        result=FleetRun.Result.HALTED,
        halted=True,
    )
    client = world.client("operator")
    page = client.get(page_url(fleet)).content.decode()
    assert "flk-fleet-retry" in page and "flk-fleet-resume" in page and "flk-fleet-cancel" not in page

    confirm = client.get(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "retry"])).content.decode()
    done = client.post(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "retry"]), {"confirm": "yes"}, follow=True)

    assert "The 1 failed member(s) run again" in confirm and "the 1 member(s) not started are started" in confirm
    assert FleetRun.objects.get(pk=fleet.pk).status == FleetRun.Status.RUNNING
    assert AuditEntry.objects.filter(event="fleet.retry_requested").get().details["members"] == ["t_01", "t_02"]
    assert len(sent) == 2
    assert "the fleet run is running" in " ".join(str(m) for m in get_messages(done.wsgi_request))


def test_under_a_policy_the_admin_retry_opens_a_request_and_says_so_and_nothing_runs(world, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(fleets, "members_dispatch", lambda ids: sent.extend(ids))
    policy("tenants", current_environment(), 2)
    fleet = fleet_make(
        members={"t_00": (M.SUCCEEDED, 0), "t_01": (M.FAILED, 1)}, status=FleetRun.Status.FINISHED, result=FleetRun.Result.HALTED, halted=True
    )

    done = world.client("operator").post(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "retry"]), {"confirm": "yes"}, follow=True)

    [request] = ChangeRequest.objects.filter(kind=ChangeRequest.Kind.FLEET_RETRY)
    assert request.status == ChangeRequest.Status.PENDING and request.required_approvals == 2
    shown = " ".join(str(m) for m in get_messages(done.wsgi_request))
    assert f"request #{request.pk} was opened" in shown and "2 approval(s)" in shown
    assert reverse("admin:changes_app_changerequest_change", args=[request.pk]) in shown
    assert FleetRun.objects.get(pk=fleet.pk).status == FleetRun.Status.FINISHED and sent == []


def test_an_action_that_no_longer_applies_changes_nothing_and_says_why(world):
    fleet = fleet_make(members={"t_00": (M.SUCCEEDED, 0)}, status=FleetRun.Status.FINISHED, result=FleetRun.Result.SUCCEEDED)
    client = world.client("operator")
    before = AuditEntry.objects.exclude(event="access.refused").count()

    confirm = client.get(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"]))
    done = client.post(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "cancel"]), {"confirm": "yes"}, follow=True)
    unknown = client.get(reverse("admin:changes_app_fleetrun_act", args=[fleet.pk, "explode"]), follow=True)

    assert 'id="flk-refusal"' in confirm.content.decode() and 'id="flk-confirm"' not in confirm.content.decode()
    assert "already finished" in " ".join(str(m) for m in get_messages(done.wsgi_request))
    assert "No such action" in " ".join(str(m) for m in get_messages(unknown.wsgi_request))
    assert FleetRun.objects.get(pk=fleet.pk).result == FleetRun.Result.SUCCEEDED
    assert AuditEntry.objects.exclude(event="access.refused").count() == before


# -- what the page shows ----------------------------------------------------------------------------


def test_the_page_shows_wave_progress_counts_per_change_a_legend_and_the_matrix(world):
    fleet = mixed_fleet()

    html = world.client("viewer").get(page_url(fleet)).content.decode()

    assert "Wave 1 of 1: 3 of 4 members finished (2 failed)" in html
    assert 'class="flk-wave" data-wave="0"' in html and "Canary" in html
    # Counts per change, in words beside their colour: 2 applied, 1 failed, 2 not applied yet.
    assert (
        'data-state="APPLIED" style="background:#e8f5e9;color:#1b5e20;border:1px solid #1b5e20;padding:0 .4em;margin-right:.4em;display:inline-block">Applied: 2'
        in html
    )
    assert ">Failed: 1<" in html and ">Not applied yet: 2<" in html and ">Not applied yet: 5<" in html
    assert 'id="flk-legend"' in html and "Marked as rolled back: the next run applies it" in html
    assert html.count('class="flk-cell" data-state="APPLIED"') == 2 and 'data-state="FAILED" title="Failed"' in html
    assert "2 of the failed blocked" not in html and "(1 of the failed blocked)" in html
    assert members_shown(world.client("viewer").get(page_url(fleet))) == ["t_00", "t_01", "t_02", "t_03", "t_04"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("failed", ["t_02"]), ("blocked", ["t_03"]), ("attention", ["t_02", "t_03"]), ("running", ["t_04"]), ("SUCCEEDED", ["t_00", "t_01"])],
)
def test_the_member_filter_shows_only_the_members_asked_for(world, name, expected):
    fleet = mixed_fleet()

    assert members_shown(world.client("viewer").get(page_url(fleet, status=name))) == expected


def test_an_unknown_filter_is_refused_clearly_and_every_member_shown(world):
    fleet = mixed_fleet()

    response = world.client("viewer").get(page_url(fleet, status="<script>bogus"))

    assert response.status_code == 200
    assert members_shown(response) == ["t_00", "t_01", "t_02", "t_03", "t_04"]
    message = " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert "unknown member filter" in message and "attention, failed, blocked" in message
    assert "<script>bogus" not in response.content.decode()


def test_each_failed_or_blocked_member_shows_its_error_and_the_guidance_of_a_change_that_needs_a_person(world):
    fleet = mixed_fleet()
    state_set("t_03", CREATE, "APPLIED", checksum="0" * 64)  # edited after it was applied: checksum drift

    html = world.client("viewer").get(page_url(fleet, status="attention")).content.decode()

    assert 'class="flk-member-issues" id="flk-issues-1" data-member="t_02"' in html
    assert "relation on t_02 exploded" in html
    assert "t_03: blocked (its run: blocked)" in html and "stage main is held" in html
    assert f"{CREATE} was edited after it was applied: the code no longer matches what ran." in html
    assert f"flamingock fleet retry {fleet.pk}" in html


def test_the_page_reads_a_constant_number_of_queries_whatever_the_number_of_members(world):
    def fleet_of(count: int, prefix: str) -> FleetRun:
        members = {f"{prefix}{i:03d}": (M.FAILED if i % 5 == 0 else M.SUCCEEDED, i // 10) for i in range(count)}
        fleet = fleet_make(members=members)
        for name in list(members)[::2]:
            state_set(name, CREATE, "APPLIED", "x")
        return fleet

    small, large = fleet_of(10, "s"), fleet_of(60, "l")
    client = world.client("operator")
    client.get(page_url(small))  # warm the session and the pipeline

    # Django empties its log of queries when a request starts: each count is read at once.
    with CaptureQueriesContext(connection) as small_queries:
        assert client.get(page_url(small)).status_code == 200
    small_count = len(small_queries)
    with CaptureQueriesContext(connection) as large_queries:
        response = client.get(page_url(large))
    large_count, large_sql = len(large_queries), [q["sql"][:120] for q in large_queries]

    assert response.content.decode().count('class="flk-member"') == 60
    assert large_count == small_count, large_sql
    print(f"fleet page: {large_count} queries for 10 and for 60 members")
    assert 5 < large_count <= 20


def test_members_are_paginated_by_a_hundred(world):
    fleet = fleet_make(members={f"p{i:03d}": (M.SUCCEEDED, 1) for i in range(150)})

    first = world.client("viewer").get(page_url(fleet)).content.decode()
    second = world.client("viewer").get(page_url(fleet, page=2)).content.decode()
    beyond = world.client("viewer").get(page_url(fleet, page=99)).content.decode()

    assert first.count('class="flk-member"') == 100 and "page 1 of 2" in first
    assert second.count('class="flk-member"') == 50 and 'data-member="p149"' in second
    assert 'data-member="p149"' in beyond


def test_live_progress_is_json_with_each_wave(world):
    fleet = mixed_fleet()

    shown = world.client("viewer").get(reverse("admin:changes_app_fleetrun_progress", args=[fleet.pk])).json()

    assert shown["finished"] is False and shown["progress"] == "Wave 1 of 1: 3 of 4 members finished (2 failed)"
    assert [(w["wave"], w["total"], w["finished"], w["running"]) for w in shown["waves"]] == [(0, 1, 1, 0), (1, 4, 3, 1)]


def test_the_list_puts_fleet_runs_in_progress_first_and_the_dashboard_shows_them(world):
    done = fleet_make(members={"t_00": (M.SUCCEEDED, 0)}, status=FleetRun.Status.FINISHED, result=FleetRun.Result.SUCCEEDED)
    running = mixed_fleet()

    listed = world.client("viewer").get(reverse("admin:changes_app_fleetrun_changelist")).content.decode()
    dashboard = world.client("viewer").get(reverse("admin:index")).content.decode()
    elsewhere = world.client("stranger").get(reverse("admin:index")).content.decode()

    assert listed.index(str(running.pk)[:8]) < listed.index(str(done.pk)[:8])
    assert "4 of 5 finished, 2 failed" in listed
    assert 'id="flk-fleets"' in dashboard and "Wave 1 of 1: 3 of 4 members finished (2 failed)" in dashboard
    assert str(running.pk)[:8] in dashboard and str(done.pk)[:8] not in dashboard
    assert str(running.pk)[:8] not in elsewhere


# -- the API shows what the page shows ----------------------------------------------------------------


def test_the_api_filters_members_and_serves_the_matrix_to_those_who_see_the_group(world):
    fleet = mixed_fleet()
    viewer, stranger = client_for(world.people["viewer"]), client_for(world.people["stranger"])

    failed = viewer.get(f"/api/v1/fleets/{fleet.pk}/?status=failed")
    bad = viewer.get(f"/api/v1/fleets/{fleet.pk}/?status=bogus")
    matrix = viewer.get(f"/api/v1/fleets/{fleet.pk}/matrix/?status=attention&limit=1")

    assert failed.status_code == 200
    assert [m["member"] for m in failed.json()["members"]] == ["t_02"] and failed.json()["counts"]["FAILED"] == 2
    assert bad.status_code == 400 and "unknown member filter" in bad.content.decode()
    assert matrix.status_code == 200
    data = matrix.json()
    assert data["progress"] == "Wave 1 of 1: 3 of 4 members finished (2 failed)" and data["blocked"] == 1
    assert data["changes"][0] == {"id": CREATE, "states": {"APPLIED": 2, "FAILED": 1, "": 2}}
    assert (data["page"]["matched"], data["page"]["pages"], [m["member"] for m in data["page"]["members"]]) == (2, 2, ["t_02"])
    assert data["page"]["members"][0]["issues"]["results"][0]["error"] == "relation on t_02 exploded"
    assert viewer.get(f"/api/v1/fleets/{fleet.pk}/matrix/?limit=0").status_code == 400
    assert stranger.get(f"/api/v1/fleets/{fleet.pk}/matrix/").status_code == 404
    assert stranger.get(f"/api/v1/fleets/{fleet.pk}/?status=failed").status_code == 404
