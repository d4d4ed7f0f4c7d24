"""The permission matrix of the admin (docs/semantics.md §9): every role, and a user holding the ``operate``
object permission on one target system only, against every admin page and action.

The expected outcomes are written out below as a literal table, not derived from the code under
test. Outcomes: ``ok`` the page is shown; ``done`` the action was performed (a redirect to its
result); ``refused`` 403; ``absent`` the object is not in the user's lists (the admin answers
"doesn't exist", or 404 for JSON). An action on an object the user may not see answers as on a
missing one: ``absent``, never ``refused`` (no existence oracle; tests/changes_app/test_visibility_closed.py).
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from changes_app import services
from changes_app.models import ChangeRequest, Run, TargetSystem
from tests.changes_app.test_admin_pages import World, world_build
from tests.support.workers import Broker

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ("compliance", "engineer", "approver", "platform", "scoped")

# fmt: off
#: page or action                  compliance  engineer   approver   platform   scoped (operate on app-db only)
MATRIX: dict[str, tuple[str, str, str, str, str]] = {
    "dashboard":                    ("ok",      "ok",      "ok",      "ok",      "ok"),
    "changes list":                 ("ok",      "ok",      "ok",      "ok",      "ok"),
    "change app-db detail":         ("ok",      "ok",      "ok",      "ok",      "ok"),
    "change journal detail":        ("ok",      "ok",      "ok",      "ok",      "absent"),
    "issues page":                  ("ok",      "ok",      "ok",      "ok",      "ok"),
    "undo app-db form":             ("refused", "ok",      "refused", "refused", "ok"),
    "undo journal form":            ("refused", "ok",      "refused", "refused", "absent"),
    "skip journal issue request":   ("refused", "done",    "refused", "refused", "absent"),
    "runs list":                    ("ok",      "ok",      "ok",      "ok",      "ok"),
    "run the pipeline":             ("refused", "done",    "refused", "refused", "done"),
    "run detail":                   ("ok",      "ok",      "ok",      "ok",      "absent"),
    "run progress json":            ("ok",      "ok",      "ok",      "ok",      "absent"),
    "cancel a finished run":        ("refused", "done",    "refused", "done",    "absent"),
    "requests list":                ("ok",      "ok",      "ok",      "ok",      "ok"),
    "request app-db detail":        ("ok",      "ok",      "ok",      "ok",      "ok"),
    "request journal detail":       ("ok",      "ok",      "ok",      "ok",      "absent"),
    "approve app-db request":       ("refused", "refused", "done",    "refused", "refused"),
    "reject journal request":       ("refused", "refused", "done",    "refused", "absent"),
    "cancel app-db request":        ("refused", "done",    "refused", "refused", "refused"),
    "comment on app-db request":    ("refused", "done",    "done",    "refused", "done"),
    "targets list":                 ("ok",      "ok",      "ok",      "ok",      "ok"),
    "target app-db detail":         ("ok",      "ok",      "ok",      "ok",      "ok"),
    "target journal detail":        ("ok",      "ok",      "ok",      "ok",      "absent"),
    "set a policy":                 ("refused", "refused", "refused", "done",    "refused"),
    "object permissions screen":    ("refused", "refused", "refused", "ok",      "refused"),
    "lock page":                    ("ok",      "ok",      "ok",      "ok",      "refused"),
    "force-release the lock":       ("refused", "refused", "refused", "done",    "refused"),
    "audit trail":                  ("ok",      "ok",      "ok",      "ok",      "refused"),
}

#: What each list shows each user: the change ids (by their prefix) and the target systems.
LISTS: dict[str, tuple[set, set, set, set, set]] = {
    #                  compliance                       engineer                         approver                         platform                         scoped
    "changes":        ({"table", "note", "broken"},    {"table", "note", "broken"},     {"table", "note", "broken"},     {"table", "note", "broken"},     {"table"}),
    "targets":        ({"app-db", "journal"},          {"app-db", "journal"},           {"app-db", "journal"},           {"app-db", "journal"},           {"app-db"}),
    "requests":       ({"table", "note"},              {"table", "note"},               {"table", "note"},               {"table", "note"},               {"table"}),
}

#: Buttons that act, shown on the app-db change's page and the runs list.
BUTTONS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "undo button on change":        (False,     True,      False,     False,     True),
    "run button on runs list":      (False,     True,      False,     False,     True),
    "approve button on request":    (False,     False,     True,      False,     False),
}
# fmt: on


def outcome(response) -> str:
    if response.status_code == 403:
        return "refused"
    if response.status_code == 404:
        return "absent"
    if response.status_code == 200:
        return "ok"
    if response.status_code == 302:
        return "absent" if response.url == reverse("admin:index") else "done"
    return f"status {response.status_code}"


@pytest.fixture
def world(make_pipeline, unique, settings, journal):
    built = world_build(make_pipeline, unique, settings)
    engineer = built.people["engineer"].actor
    built.db_request = services.request_submit(kind="UNDO", change_id=built.db_change, actor=engineer, reason="r", source="UI").request
    built.note_request = services.request_submit(kind="UNDO", change_id=built.note, actor=engineer, reason="r", source="UI").request
    return built


def probes(world: World) -> dict:
    """page or action -> (method, url, data)."""
    record = {c: world.record(c).pk for c in (world.db_change, world.note)}
    app_db, journal = (TargetSystem.objects.get(name=n).pk for n in ("app-db", "journal"))
    run = world.pipeline_run.pk
    decide = "admin:changes_app_changerequest_decide"
    return {
        "dashboard": ("get", reverse("admin:index"), None),
        "changes list": ("get", reverse("admin:changes_app_changerecord_changelist"), None),
        "change app-db detail": ("get", reverse("admin:changes_app_changerecord_change", args=[record[world.db_change]]), None),
        "change journal detail": ("get", reverse("admin:changes_app_changerecord_change", args=[record[world.note]]), None),
        "issues page": ("get", reverse("admin:changes_app_changerecord_issues"), None),
        "undo app-db form": ("get", reverse("admin:changes_app_changerecord_act", args=["UNDO", world.db_change]), None),
        "undo journal form": ("get", reverse("admin:changes_app_changerecord_act", args=["UNDO", world.note]), None),
        "skip journal issue request": (
            "post",
            reverse("admin:changes_app_changerecord_act", args=["SKIP", world.broken]),
            {"reason": "not here", "confirm": "yes"},
        ),
        "runs list": ("get", reverse("admin:changes_app_run_changelist"), None),
        "run the pipeline": ("post", reverse("admin:changes_app_run_start"), {"reason": "deploy", "confirm": "yes"}),
        "run detail": ("get", reverse("admin:changes_app_run_change", args=[run]), None),
        "run progress json": ("get", reverse("admin:changes_app_run_progress", args=[run]), None),
        "cancel a finished run": ("post", reverse("admin:changes_app_run_cancel", args=[run]), {}),
        "requests list": ("get", reverse("admin:changes_app_changerequest_changelist"), None),
        "request app-db detail": ("get", reverse("admin:changes_app_changerequest_change", args=[world.db_request.pk]), None),
        "request journal detail": ("get", reverse("admin:changes_app_changerequest_change", args=[world.note_request.pk]), None),
        "approve app-db request": ("post", reverse(decide, args=[world.db_request.pk]), {"decision": "approve"}),
        "reject journal request": ("post", reverse(decide, args=[world.note_request.pk]), {"decision": "reject", "comment": "no"}),
        "cancel app-db request": ("post", reverse(decide, args=[world.db_request.pk]), {"decision": "cancel"}),
        "comment on app-db request": ("post", reverse(decide, args=[world.db_request.pk]), {"decision": "comment", "comment": "hello"}),
        "targets list": ("get", reverse("admin:changes_app_targetsystem_changelist"), None),
        "target app-db detail": ("get", reverse("admin:changes_app_targetsystem_change", args=[app_db]), None),
        "target journal detail": ("get", reverse("admin:changes_app_targetsystem_change", args=[journal]), None),
        "set a policy": (
            "post",
            reverse("admin:changes_app_targetsystem_policy", args=[app_db]),
            {"environment": "staging", "required_approvals": "2", "reason": "matrix"},
        ),
        "object permissions screen": ("get", reverse("admin:changes_app_targetsystem_permissions", args=[app_db]), None),
        "lock page": ("get", reverse("admin:changes_app_run_lock"), None),
        "force-release the lock": ("post", reverse("admin:changes_app_run_lock"), {"reason": "stale"}),
        "audit trail": ("get", reverse("admin:audit_app_auditentry_changelist"), None),
    }


def test_every_role_meets_the_expected_outcome_on_every_admin_page_and_action(world, unique):
    found = {}
    broker = Broker(f"matrix-{unique}")
    try:
        with broker.publishing():
            for name, (method, url, data) in probes(world).items():
                row = []
                for who in ROLES:
                    client = world.client(who)
                    response = client.get(url) if method == "get" else client.post(url, data)
                    row.append(outcome(response))
                found[name] = tuple(row)
    finally:
        broker.cleanup()
    assert found == MATRIX


def _ids_in(page: str, prefixes: set[str], world: World) -> set[str]:
    names = {"table": world.db_change, "note": world.note, "broken": world.broken}
    return {prefix for prefix, change_id in names.items() if prefix in prefixes and change_id in page}


def test_every_list_is_filtered_to_what_each_user_may_see(world):
    found = {"changes": [], "targets": [], "requests": []}
    for who in ROLES:
        client = world.client(who)
        page = client.get(reverse("admin:changes_app_changerecord_changelist")).content.decode()
        found["changes"].append(_ids_in(page, {"table", "note", "broken"}, world))
        page = client.get(reverse("admin:changes_app_targetsystem_changelist")).content.decode()
        found["targets"].append({name for name in ("app-db", "journal") if f">{name}</a>" in page})
        page = client.get(reverse("admin:changes_app_changerequest_changelist")).content.decode()
        found["requests"].append(_ids_in(page, {"table", "note"}, world))
    assert {name: tuple(rows) for name, rows in found.items()} == LISTS


def test_buttons_that_act_are_shown_only_to_those_who_may_act(world):
    found = {name: [] for name in BUTTONS}
    for who in ROLES:
        client = world.client(who)
        page = client.get(reverse("admin:changes_app_changerecord_change", args=[world.record(world.db_change).pk])).content.decode()
        found["undo button on change"].append(reverse("admin:changes_app_changerecord_act", args=["UNDO", world.db_change]) in page)
        found["run button on runs list"].append('id="flk-run-pipeline"' in client.get(reverse("admin:changes_app_run_changelist")).content.decode())
        page = client.get(reverse("admin:changes_app_changerequest_change", args=[world.db_request.pk])).content.decode()
        found["approve button on request"].append('id="flk-approve"' in page)
    assert {name: tuple(values) for name, values in found.items()} == BUTTONS


def test_runs_queued_from_the_admin_are_recorded_as_the_users_and_from_the_ui(world, unique):
    broker = Broker(f"matrix-run-{unique}")
    try:
        with broker.publishing():
            world.client("scoped").post(reverse("admin:changes_app_run_start"), {"reason": "deploy", "confirm": "yes"})
        assert broker.queued() == 1
    finally:
        broker.cleanup()
    run = Run.objects.exclude(pk=world.pipeline_run.pk).get()
    assert (run.actor, run.source, run.status, run.started_by_id) == ("scoped", Run.Source.UI, Run.Status.QUEUED, world.people["scoped"].user.pk)
    assert ChangeRequest.objects.count() == 2
