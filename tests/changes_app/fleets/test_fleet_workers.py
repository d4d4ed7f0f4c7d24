"""The fleet run that must hold (issue 22, "Must show"): 50 PostgreSQL schemas, 2 real Celery workers,
a canary of 5. A change fails on 3 members after the canary: the run halts by policy. After the fix,
"retry failed members" goes on; in wave 2 a worker is killed with ``kill -9`` in the middle of a
member: that member is left exactly as a killed single run leaves a change (STARTED, its lock to
expire, its run reaped), the fleet goes on with the others, and a second retry settles it from the
member's marker. At the end every member has each change exactly once, and the chain verifies."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from django.conf import settings as django_settings

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry, MemberChangeState
from audit_app.services import Actor
from changes_app.fleets import services as fleets
from changes_app.models import FleetMemberRun, FleetRun, Run
from changes_app.services import runs_reap
from tests.changes_app.fleets.conftest import group_change, schema_columns
from tests.conftest import REPO
from tests.support.workers import Broker, wait_for, workers_start, workers_stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]

OPERATOR = Actor(name="tests", via="tests")
MEMBERS, CANARY, WAVE, CONCURRENCY, FAILURES = 50, 5, 10, 4, 3
LEASE = 3.0


def slow_change(change_id: str, sql: str) -> str:
    """A change that takes a moment inside its transaction: the window for the kill."""
    return group_change(change_id, sql).replace(
        "    def apply(self, cursor):\n", "    def apply(self, cursor):\n        cursor.execute('SELECT pg_sleep(0.4)')\n"
    )


def beat(until, *, timeout: float, what: str) -> None:
    """The test is the beat: the runs' reaper and the fleets' reaper, every half second, until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        runs_reap()
        fleets.fleets_reap()
        time.sleep(0.5)


def finished(fleet_id) -> bool:
    return FleetRun.objects.get(pk=fleet_id).status == FleetRun.Status.FINISHED


def test_fifty_schemas_two_workers_canary_halt_retry_and_a_kill_in_wave_two(
    make_pipeline, group_targets, tenant_schemas, external_pg, subprocess_env, settings, tmp_path, unique
):
    settings.FLAMINGOCK_ENVIRONMENT = environment = f"fleet-{unique}"
    settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = 3 * LEASE  # as the default is: 3 leases
    # A message prefetched by the killed worker is lost with it: the fleets' reaper sends it again after this.
    settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT = 8
    names = tenant_schemas(MEMBERS, prefix=f"f{unique[:4]}_")
    group_targets({"schemas": names})
    flag = tmp_path / "bug"
    failing = names[CANARY : CANARY + FAILURES]  # the first three members after the canary
    flag.write_text(" ".join(failing))
    make_pipeline(
        {
            "main": {
                "0001_create.py": group_change("fleet-create", "CREATE TABLE accounts (id integer)"),
                "0002_alter.py": group_change("fleet-alter", "ALTER TABLE accounts ADD COLUMN plan text", fail_on=str(flag)),
                "0003_index.py": slow_change("fleet-index", "CREATE INDEX accounts_plan ON accounts (plan)"),
            }
        }
    )
    broker = Broker(f"fleet-{unique}")
    base = {
        **broker.env(),
        "FLAMINGOCK_ENVIRONMENT": environment,
        "FLAMINGOCK_LOCK_LEASE": str(LEASE),
        "FLAMINGOCK_LOCK_WAIT": "1",
        "FLAMINGOCK_LOCK_BACKEND": "database",
    }
    path = os.pathsep.join([os.environ["PYTHONPATH"], str(REPO)])
    names_of_workers = [f"fleet-a-{unique}@host-a", f"fleet-b-{unique}@host-b"]
    started = time.monotonic()
    workers = workers_start(names_of_workers, env_for=lambda name: subprocess_env(**base, PYTHONPATH=path), log_dir=tmp_path / "workers")
    killed = None
    try:
        with broker.publishing():
            # 1. The change fails on three members after the canary: halted by policy (3 failures).
            fleet = fleets.fleet_run_start(
                actor=OPERATOR, target="tenants", source="CLI", canary=CANARY, wave_size=WAVE, concurrency=CONCURRENCY, max_failures=FAILURES
            )
            beat(lambda: finished(fleet.pk), timeout=180, what="the first fleet run to end")
            fleet.refresh_from_db()
            assert (fleet.result, fleet.status_reason) == ("HALTED", f"{FAILURES} member(s) failed (halt at {FAILURES})"), fleet.status_reason
            statuses = dict(FleetMemberRun.objects.filter(fleet_run=fleet).values_list("member", "status"))
            assert all(statuses[name] == "SUCCEEDED" for name in names[:CANARY])
            assert {name for name, status in statuses.items() if status == "FAILED"} == set(failing)
            assert all(statuses[name] == "NOT_STARTED" for name in names[CANARY + WAVE :])  # waves 2.. never started

            # 2. The fix, and "retry failed members"; a worker is killed in the middle of a member of wave 2.
            flag.unlink()
            fleets.fleet_retry(fleet_run_id=fleet.pk, actor=OPERATOR)

            def member_of_wave_2_inside_a_change():
                running = FleetMemberRun.objects.filter(fleet_run=fleet, wave=2, status="RUNNING").exclude(run=None).select_related("run")
                for member in running:
                    states = set(AuditEntry.objects.filter(run_id=member.run_id, change_id="fleet-index").values_list("state", flat=True))
                    if states == {"STARTED"}:  # inside the change's target transaction (its pg_sleep)
                        return member
                return None

            wait_for(lambda: member_of_wave_2_inside_a_change() is not None, timeout=180, interval=0.02, what="a member of wave 2 inside a change")
            victim = member_of_wave_2_inside_a_change()
            killed = next(worker for worker in workers if worker.pid == victim.run.pid)
            killed.kill()
            beat(lambda: finished(fleet.pk), timeout=240, what="the retried fleet run to end without the killed worker")
            fleet.refresh_from_db()
            victim.refresh_from_db()
            # The killed member is left as a killed single run leaves its change; the others went on.
            assert victim.status == "FAILED" and "worker died" in victim.reason, victim.reason
            assert fleet.result == "PARTIAL"
            assert Run.objects.get(pk=victim.run_id).status == Run.Status.ABORTED
            assert FleetMemberRun.objects.filter(fleet_run=fleet).exclude(member=victim.member).exclude(status="SUCCEEDED").count() == 0

            # 3. Retry once more, after the dead worker's member lease expired: settled from its marker.
            time.sleep(LEASE + 0.5)
            fleets.fleet_retry(fleet_run_id=fleet.pk, actor=OPERATOR)
            beat(lambda: finished(fleet.pk), timeout=120, what="the last retry")
            fleet.refresh_from_db()
            failed = FleetMemberRun.objects.filter(fleet_run=fleet).exclude(status="SUCCEEDED").select_related("run")
            assert fleet.result == "SUCCEEDED", [(m.member, m.status, m.reason, m.run.results if m.run else None) for m in failed]
    finally:
        workers_stop(workers)
        broker.cleanup()
    elapsed = time.monotonic() - started

    # Every member has each change exactly once: one applied state entry per (member, change), the
    # effect in its schema, one marker row per change.
    changes = ("fleet-create", "fleet-alter", "fleet-index")
    applied = AuditEntry.objects.filter(member__in=names, change_id__in=changes, state__in=["APPLIED", "MANUAL_MARKED_AS_APPLIED"])
    per_pair: dict[tuple[str, str], int] = {}
    for member, change_id in applied.values_list("member", "change_id"):
        per_pair[(member, change_id)] = per_pair.get((member, change_id), 0) + 1
    assert per_pair == {(name, change): 1 for name in names for change in changes}
    assert set(MemberChangeState.objects.filter(member__in=names).values_list("state", flat=True)) == {"APPLIED"}
    with psycopg.connect(external_pg, autocommit=True) as connection:
        for name in names:
            markers = connection.execute(f'SELECT change_id, count(*) FROM "{name}".flamingock_marker GROUP BY change_id').fetchall()
            assert dict(markers) == dict.fromkeys(changes, 1), (name, markers)
    for name in names:
        assert schema_columns(external_pg, name, "accounts") == {"id", "plan"}
    assert not AuditEntry.objects.filter(run_id__in=FleetMemberRun.objects.values("run_id"), member=None).exists()
    events = list(AuditEntry.objects.filter(event__startswith="fleet.").order_by("seq").values_list("event", flat=True))
    assert events.count("fleet.halted") == 1 and events.count("fleet.finished") == 3
    assert audit_verify().ok
    assert killed is not None
    print(f"\n{MEMBERS} members x {len(changes)} changes on 2 workers, halt, 2 retries and a kill -9: {elapsed:.1f} s")
    assert django_settings.FLAMINGOCK_ENVIRONMENT == environment
