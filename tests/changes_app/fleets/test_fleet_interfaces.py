"""``fleet run|status|retry|cancel|resume`` on the command line and ``/api/v1/fleets/``: the same JSON
(``representations.fleet_run_data``), exit 3 for HALTED and 1 for PARTIAL, permission checked against
the target group, a fleet run of a group one cannot see is not found."""

from __future__ import annotations

import pytest

from audit_app.models import AuditEntry
from changes_app.fleets import services as fleets
from changes_app.models import FleetRun
from changes_app.services.representations import fleet_run_data
from tests.changes_app.api.conftest import client_for
from tests.changes_app.fleets.conftest import group_change
from tests.support.governance import person
from tests.support.trails import cli

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fleet_world(group_targets, tenant_schemas, make_pipeline, tmp_path):
    group_targets({"schemas": tenant_schemas(4)})
    flag = tmp_path / "bug"
    make_pipeline({"main": {"0001_create.py": group_change("fleet-create", "CREATE TABLE a (id integer)", fail_on=str(flag))}})
    return flag


def test_cli_fleet_run_status_and_retry_with_their_exit_codes(fleet_world, inline):
    fleet_world.write_text("t_00")

    started = cli("fleet", "run", "--target", "tenants", "--canary", "1", "--wave", "2", "--max-failures", "3", "--no-wait", "--json")
    inline()
    halted = cli("fleet", "status", started.json()["id"], "--json")

    assert started.code == 0, started.err
    assert halted.code == 3
    assert halted.json() == fleet_run_data(FleetRun.objects.get())
    assert (halted.json()["result"], halted.json()["counts"]) == ("HALTED", {"FAILED": 1, "NOT_STARTED": 3})

    fleet_world.write_text("t_02")
    retried = cli("fleet", "retry", started.json()["id"], "--json")
    inline()
    partial = cli("fleet", "status", started.json()["id"])

    assert retried.code == 0 and retried.json()["status"] == "RUNNING"
    assert partial.code == 1, partial.out + partial.err
    assert "PARTIAL" in partial.out and "t_02" in partial.out


def test_cli_refuses_bad_input_clearly_and_writes_nothing(fleet_world):
    no_target = cli("fleet", "run")
    not_a_group = cli("fleet", "run", "--target", "ext-pg")
    unknown = cli("fleet", "status", "8d4e2f1c-0000-4000-8000-000000000000")

    assert (no_target.code, "needs --target" in no_target.err) == (2, True)
    assert (not_a_group.code, "is not a group of members" in not_a_group.err) == (2, True)
    assert (unknown.code, "no fleet run" in unknown.err) == (2, True)
    assert not FleetRun.objects.exists()


def test_api_starts_reads_and_cancels_with_permission_against_the_group(fleet_world, inline, targets):
    admin = person("fleet-admin", superuser=True)
    nobody = person("fleet-nobody")
    client, stranger = client_for(admin), client_for(nobody)

    refused = stranger.post("/api/v1/fleets/", {"target": "tenants", "canary": 1}, format="json")
    assert refused.status_code == 403
    assert not FleetRun.objects.exists()
    refusal = AuditEntry.objects.get(event="access.refused")
    assert (refusal.actor, refusal.details["action"], refusal.details["reason"]) == ("fleet-nobody", "fleet.run", "permission")
    bad = client.post("/api/v1/fleets/", {"target": "tenants", "concurrency": 0}, format="json")
    assert bad.status_code == 400

    created = client.post("/api/v1/fleets/", {"target": "tenants", "canary": 1, "wave_size": 3}, format="json")
    assert created.status_code == 202, created.content
    fleet_id = created.json()["id"]
    assert stranger.get(f"/api/v1/fleets/{fleet_id}/").status_code == 404
    assert stranger.post(f"/api/v1/fleets/{fleet_id}/cancel/").status_code == 404

    cancelled = client.post(f"/api/v1/fleets/{fleet_id}/cancel/")
    inline()
    shown = client.get(f"/api/v1/fleets/{fleet_id}/")

    assert cancelled.status_code == 200
    assert shown.json() == fleet_run_data(FleetRun.objects.get(pk=fleet_id))
    assert shown.json()["result"] == "CANCELLED"
    assert client.post(f"/api/v1/fleets/{fleet_id}/cancel/").status_code == 409


def test_api_fleet_plan_is_shown_to_those_who_see_the_group(fleet_world, targets):
    admin, nobody = person("plan-admin", superuser=True), person("plan-nobody")
    fleets.members_discover(target="tenants")

    shown = client_for(admin).get("/api/v1/fleets/plan/tenants/?limit=2")
    hidden = client_for(nobody).get("/api/v1/fleets/plan/tenants/")
    not_a_group = client_for(admin).get("/api/v1/fleets/plan/ext-pg/")

    assert shown.status_code == 200
    assert (shown.json()["members"], shown.json()["changes"][0]["actions"], len(shown.json()["page"]["members"])) == (4, {"APPLY": 4}, 2)
    assert hidden.status_code == 404
    assert not_a_group.status_code == 409
    assert client_for(admin).get("/api/v1/fleets/plan/tenants/?limit=0").status_code == 400


def test_cli_fleet_plan_prints_the_apis_plan_and_refuses_bad_input(fleet_world, targets):
    admin = person("plan-cli-admin", superuser=True)
    fleets.members_discover(target="tenants")

    shown = cli("fleet", "plan", "--target", "tenants", "--limit", "2", "--json")
    text = cli("fleet", "plan", "--target", "tenants")

    assert shown.code == 0, shown.err
    assert shown.json() == client_for(admin).get("/api/v1/fleets/plan/tenants/?limit=2").json()
    assert text.code == 0 and "fleet plan of tenants: 4 member(s), 1 change(s)" in text.out
    assert "fleet-create" in text.out and "APPLY 4" in text.out and "members 1 to 4 of 4" in text.out
    assert (cli("fleet", "plan").code, "needs --target" in cli("fleet", "plan").err) == (2, True)
    bad_limit = cli("fleet", "plan", "--target", "tenants", "--limit", "0")
    assert (bad_limit.code, "--limit 1 to 500" in bad_limit.err) == (2, True)
    not_a_group = cli("fleet", "plan", "--target", "ext-pg")
    assert (not_a_group.code, "is not a group of members" in not_a_group.err) == (2, True)
