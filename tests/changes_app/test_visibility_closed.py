"""Visibility closed (docs/semantics.md §7, issue "Safe to deploy"): a run's details show a viewer
only the changes of target systems they see, with a count of the hidden ones (API, admin, command
line); and every admin URL answers the same for an object the user cannot see as for a missing one.

The world (tests/changes_app/test_admin_pages.py): changes on app-db and on the journal, and a
person, ``scoped``, with ``operate`` on app-db only.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from rest_framework.test import APIClient

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.models import ChangeRequest, Run, TargetSystem
from tests.changes_app.test_admin_pages import World, world_build
from tests.support.trails import cli

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(make_pipeline, unique, settings, journal) -> World:
    return world_build(make_pipeline, unique, settings)


@pytest.fixture
def scoped_run(world) -> Run:
    """A run of the whole pipeline that ``scoped`` started: its results name journal changes too."""
    run = services.run_start(actor=world.people["scoped"].actor, source=Run.Source.UI)
    journal_rows = [row for row in run.results if row["change_id"] in (world.note, world.broken)]
    assert journal_rows and any(row["change_id"] == world.db_change for row in run.results), run.results
    return run


def hidden_ids(world: World) -> tuple[str, str]:
    return world.note, world.broken


def assert_only_app_db(world: World, text: str) -> None:
    for change_id in hidden_ids(world):
        assert change_id not in text, f"{change_id} (a journal change) is shown to scoped:\n{text[:3000]}"
    assert world.db_change in text


def hidden_count(world: World, run: Run) -> int:
    return sum(1 for row in run.results if row["change_id"] in hidden_ids(world))


# -- run details -------------------------------------------------------------------------------------


def test_the_api_run_detail_shows_scoped_only_its_targets_changes_and_counts_the_others(world, scoped_run):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.people['scoped'].token}")

    response = client.get(f"/api/v1/runs/{scoped_run.pk}/")

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert [row["change_id"] for row in body["results"]] == [world.db_change]
    assert body["hidden_results"] == hidden_count(world, scoped_run) >= 2
    assert sum(body["counts"].values()) == len(body["results"])
    assert_only_app_db(world, json.dumps(body))
    # The run list shows the same run the same way.
    listed = [run for run in client.get("/api/v1/runs/").json()["results"] if run["id"] == str(scoped_run.pk)]
    assert listed == [body]


def test_a_viewer_who_sees_every_target_gets_every_result_and_no_hidden_count(world, scoped_run):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.people['compliance'].token}")

    body = client.get(f"/api/v1/runs/{scoped_run.pk}/").json()

    assert len(body["results"]) == len(scoped_run.results) and body["hidden_results"] == 0
    assert body["counts"] == scoped_run.counts


def test_the_admin_run_page_and_its_progress_show_scoped_only_its_targets_changes(world, scoped_run):
    client = world.client("scoped")

    page = client.get(reverse("admin:changes_app_run_change", args=[scoped_run.pk]))
    progress = client.get(reverse("admin:changes_app_run_progress", args=[scoped_run.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert_only_app_db(world, html)
    assert f"{hidden_count(world, scoped_run)} more changes on target systems you cannot see" in html
    assert progress.status_code == 200
    for change_id in hidden_ids(world):
        assert change_id not in progress.content.decode()


def test_the_command_line_run_shows_a_token_user_only_its_targets_changes(world, monkeypatch):
    monkeypatch.setenv("FLAMINGOCK_TOKEN", world.people["scoped"].token)

    result = cli("run", "--json")

    data = result.json()
    assert [row["change_id"] for row in data["results"]] == [world.db_change], result.out
    assert data["hidden_results"] >= 2
    assert_only_app_db(world, result.out)
    text = cli("run")
    assert "more change(s) on target systems you cannot see" in text.out
    for change_id in hidden_ids(world):
        assert change_id not in text.out + text.err


def test_the_local_operator_of_an_unprotected_environment_sees_every_result(world):
    data = cli("run", "--json").json()

    assert {world.note, world.broken} <= {row["change_id"] for row in data["results"]}
    assert data["hidden_results"] == 0


# -- hidden and missing answer the same on every admin URL -------------------------------------------


MISSING_UUID = str(uuid.UUID(int=1))


def probes(world: World) -> dict[str, tuple[str, str, str, dict | None]]:
    """URL name -> (method, hidden key, missing key, data): every custom admin URL on an object, and
    Django's own object pages, for an object ``scoped`` cannot see and one that does not exist."""
    note_request = services.request_submit(kind="UNDO", change_id=world.note, actor=world.people["engineer"].actor, reason="r", source="UI").request
    journal = str(TargetSystem.objects.get(name="journal").pk)
    run = str(world.pipeline_run.pk)  # the engineer's run: its changes are on the journal too
    assert not Run.objects.filter(pk=MISSING_UUID).exists() and not ChangeRequest.objects.filter(pk=999999).exists()
    record = str(world.record(world.note).pk)
    return {
        "changerecord_act GET": ("GET", "changes_app_changerecord_act", world.note, "no-such-change", None),
        "changerecord_act POST": ("POST", "changes_app_changerecord_act", world.note, "no-such-change", {"reason": "r", "confirm": "yes"}),
        "changerecord_change": ("GET", "changes_app_changerecord_change", record, "999999", None),
        "changerecord_history": ("GET", "changes_app_changerecord_history", record, "999999", None),
        "changerequest_decide POST": (
            "POST",
            "changes_app_changerequest_decide",
            str(note_request.pk),
            "999999",
            {"decision": "comment", "comment": "x"},
        ),
        "changerequest_decide GET": ("GET", "changes_app_changerequest_decide", str(note_request.pk), "999999", None),
        "changerequest_change": ("GET", "changes_app_changerequest_change", str(note_request.pk), "999999", None),
        "changerequest_history": ("GET", "changes_app_changerequest_history", str(note_request.pk), "999999", None),
        "run_progress": ("GET", "changes_app_run_progress", run, MISSING_UUID, None),
        "run_cancel POST": ("POST", "changes_app_run_cancel", run, MISSING_UUID, {}),
        "run_cancel GET": ("GET", "changes_app_run_cancel", run, MISSING_UUID, None),
        "run_change": ("GET", "changes_app_run_change", run, MISSING_UUID, None),
        "run_history": ("GET", "changes_app_run_history", run, MISSING_UUID, None),
        "targetsystem_policy POST": ("POST", "changes_app_targetsystem_policy", journal, "999999", {"environment": "qa", "required_approvals": "2"}),
        "targetsystem_policy GET": ("GET", "changes_app_targetsystem_policy", journal, "999999", None),
        "targetsystem_change": ("GET", "changes_app_targetsystem_change", journal, "999999", None),
        "targetsystem_history": ("GET", "changes_app_targetsystem_history", journal, "999999", None),
        "targetsystem_permissions": ("GET", "changes_app_targetsystem_permissions", journal, "999999", None),
    }


def answer(world: World, method: str, name: str, key: str, data: dict | None) -> tuple:
    """What the admin answered ``scoped``, with the object's key replaced: status, where to, content
    type, messages (a new session each time, so that no earlier message is left over)."""
    client = world.client("scoped")
    args = ["UNDO", key] if name == "changes_app_changerecord_act" else [key]
    response = client.get(reverse(f"admin:{name}", args=args)) if method == "GET" else client.post(reverse(f"admin:{name}", args=args), data)
    location = response.get("Location", "").replace(key, "<key>")
    shown = [str(message).replace(key, "<key>") for message in get_messages(response.wsgi_request)]
    return response.status_code, location, response.get("Content-Type", ""), shown


def test_every_admin_url_answers_the_same_for_a_hidden_object_as_for_a_missing_one(world):
    before = services.pipeline_plan().item(world.note).latest_state

    table = probes(world)
    differing = {}
    for label, (method, name, hidden, missing, data) in table.items():
        seen_hidden = answer(world, method, name, hidden, data)
        seen_missing = answer(world, method, name, missing, data)
        if seen_hidden != seen_missing:
            differing[label] = {"hidden": seen_hidden, "missing": seen_missing}
        assert seen_hidden[0] != 200 or name.endswith("_changelist"), (label, seen_hidden)

    assert differing == {}
    # Nothing was done to the hidden objects.
    assert services.pipeline_plan().item(world.note).latest_state == before
    assert not ChangeRequest.objects.filter(status=ChangeRequest.Status.CANCELLED).exists()
    assert not Run.objects.filter(cancel_requested_at__isnull=False).exists()


def test_a_visible_object_the_user_may_not_act_on_is_still_refused(world):
    """Closing the oracle does not open the door: scoped sees app-db's change but may not set a policy."""
    client = world.client("scoped")
    app_db = TargetSystem.objects.get(name="app-db").pk

    response = client.post(reverse("admin:changes_app_targetsystem_policy", args=[app_db]), {"environment": "qa", "required_approvals": "2"})

    assert response.status_code == 403


def test_a_hidden_object_is_a_refusal_on_the_trail_and_a_missing_one_is_not(world):
    """The answer is the same (above), the evidence is not: only the trail's readers see that
    ``scoped`` asked for something that exists (docs/semantics.md §13.3: reason ``not_visible``)."""

    def refusals() -> list[dict]:
        return [entry.details for entry in AuditEntry.objects.filter(event="access.refused").order_by("seq")]

    answer(world, "POST", "changes_app_changerecord_act", "no-such-change", {"reason": "r", "confirm": "yes"})
    assert refusals() == []

    answer(world, "POST", "changes_app_changerecord_act", world.note, {"reason": "r", "confirm": "yes"})

    written = refusals()
    assert len(written) == 1, written
    assert written[0]["reason"] == "not_visible", written
    assert world.note in written[0]["object"], written
