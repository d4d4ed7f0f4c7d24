"""The fleet view stays fast on a large fleet (docs/fleet.md, "The fleet view"): at 1,000 members × 5
changes its page reads the same number of queries as at 10 members, and one page of 100 members."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit_app.models import MemberChangeState
from changes_app.conf import current_environment
from changes_app.governance.roles import ENGINEER
from changes_app.models import FleetMemberRun, FleetRun, Run
from changes_app.pipeline.discovery import pipeline_load
from tests.changes_app.fleets.conftest import group_change
from tests.support.governance import person

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHANGES = [f"fleet-scale-{index}" for index in range(5)]


def fleet_of(count: int, prefix: str) -> FleetRun:
    """``count`` members, every tenth failed (with its run and error), the others succeeded, each
    change applied on each succeeded member."""
    pipeline = pipeline_load()
    checksums = {change.id: change.checksum for stage in pipeline.stages for change in stage.changes if change.target == "tenants"}
    fleet = FleetRun.objects.create(target="tenants", environment=current_environment(), source="UI", actor="t", checksums=checksums, wave=3)
    names = [f"{prefix}{index:04d}" for index in range(count)]
    failed = set(names[::10])
    runs = {
        name: Run(
            source="UI",
            environment=fleet.environment,
            actor="t",
            status=Run.Status.FAILED,
            results=[{"change_id": CHANGES[0], "result": "FAILED", "error": "boom"}],
        )
        for name in failed
    }
    Run.objects.bulk_create(runs.values())
    FleetMemberRun.objects.bulk_create(
        [
            FleetMemberRun(
                fleet_run=fleet,
                member=name,
                wave=0 if index < 5 else 1 + index // 200,
                status=FleetMemberRun.Status.FAILED if name in failed else FleetMemberRun.Status.SUCCEEDED,
                run=runs.get(name),
            )
            for index, name in enumerate(names)
        ]
    )
    MemberChangeState.objects.bulk_create(
        [
            MemberChangeState(member=name, change_id=change_id, state="FAILED" if name in failed else "APPLIED", entry_id=1, target="tenants")
            for name in names
            for change_id in CHANGES
            if name not in failed or change_id == CHANGES[0]
        ]
    )
    return fleet


def test_the_fleet_page_at_a_thousand_members_by_five_changes_reads_as_many_queries_as_at_ten(group_targets, make_pipeline):
    group_targets({"schemas": ["t_00"]})
    make_pipeline({"main": {f"000{index}_c.py": group_change(change_id, "SELECT 1") for index, change_id in enumerate(CHANGES)}})
    client = Client()
    client.force_login(person("scale-operator", ENGINEER, operate=("tenants",)).user)
    small, large = fleet_of(10, "s"), fleet_of(1000, "l")
    client.get(reverse("admin:changes_app_fleetrun_change", args=[small.pk]))

    # Django empties its log of queries when a request starts: each count is read at once.
    with CaptureQueriesContext(connection) as small_queries:
        client.get(reverse("admin:changes_app_fleetrun_change", args=[small.pk]))
    small_count = len(small_queries)
    timings = []
    for url in ("", "?status=attention", "?page=10"):
        started, cpu = time.perf_counter(), time.process_time()
        with CaptureQueriesContext(connection) as large_queries:
            response = client.get(reverse("admin:changes_app_fleetrun_change", args=[large.pk]) + url)
        timings.append((url or "first page", round(time.perf_counter() - started, 3), round(time.process_time() - cpu, 3)))
        assert response.status_code == 200
        assert len(large_queries) == small_count, [q["sql"][:120] for q in large_queries]
    html = client.get(reverse("admin:changes_app_fleetrun_change", args=[large.pk])).content.decode()

    assert small_count > 5
    print(f"fleet page, 1,000 members x 5 changes, {small_count} queries; (page, wall s, cpu s): {timings}")
    assert html.count('class="flk-member"') == 100
    assert "Applied: 900" in html and "Failed: 100" in html and "Not applied yet: 100" in html
