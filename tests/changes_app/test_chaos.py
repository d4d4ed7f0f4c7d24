"""Chaos: the lock store dies, the audit database drops the runner, the holder freezes (docs/semantics.md §1, §6).

Real processes against the real servers: ``flamingock run`` in child processes, a private
``redis-server`` that is killed for real (never the machine's shared Redis), ``pg_terminate_backend``
on the runner's own PostgreSQL sessions, and SIGSTOP/SIGCONT of a holder inside its open shared
transaction. Every change counts its effect on the target itself, so "exactly once" is counted, not
assumed. PostgreSQL only: SQLite has no sessions to terminate and no idle-transaction timeout.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from django.db import connection

from audit_app.models import AuditEntry, ChangeState
from changes_app.models import Run
from tests.support.crash import Child, Effects, Spec, ledger_problems, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]


class Chaos:
    """One test's pipeline, its counted effects and the child runs that execute it."""

    def __init__(self, *, unique: str, make_pipeline, subprocess_env, effects: Effects, directory: Path):
        self.unique = unique
        self.environment = f"t-{unique}"
        self.make_pipeline = make_pipeline
        self.subprocess_env = subprocess_env
        self.effects = effects
        self.directory = directory
        self.specs: list[Spec] = []
        self.children: list[Child] = []

    def pipeline(self, specs: list[Spec]) -> None:
        self.specs = specs
        files = {spec.file_name: spec.source(self.effects.table_for(spec)) for spec in specs}
        self.make_pipeline({"main": files})

    def env(self, **extra: str) -> dict[str, str]:
        values = {"FLAMINGOCK_ENVIRONMENT": self.environment, "FLAMINGOCK_LOCK_WAIT": "30", **extra}
        env = self.subprocess_env(**values)
        if "REDIS_URL" not in extra:
            env.pop("REDIS_URL", None)
        return env

    def run(self, env: dict[str, str]) -> Child:
        child = Child("flamingock", "run", "--json", env=env, directory=self.directory)
        self.children.append(child)
        return child

    def applied(self) -> set[str]:
        ids = [spec.id for spec in self.specs]
        return set(ChangeState.objects.filter(change_id__in=ids, state="APPLIED").values_list("change_id", flat=True))

    def counts(self) -> dict[str, int]:
        counted = self.effects.counts()
        return {spec.id: counted.get(spec.id, 0) for spec in self.specs}

    def problems(self) -> list[str]:
        """Where the ledger disagrees with the effects counted on the targets."""
        shared = [spec for spec in self.specs if spec.kind == "shared"]
        problems = ledger_problems([spec for spec in self.specs if spec.kind != "shared"], self.effects)
        counts, states = self.counts(), dict(ChangeState.objects.filter(change_id__in=[spec.id for spec in shared]).values_list("change_id", "state"))
        for spec in shared:
            # docs/semantics.md §5: a shared-transaction change is APPLIED with its effect, or has none: never
            # run, or FAILED (written after the rollback, in its own transaction).
            state, count = states.get(spec.id), counts[spec.id]
            if count != {"APPLIED": 1, None: 0, "FAILED": 0}.get(state, -1):
                problems.append(f"{spec.id} (shared): latest state {state} with {count} effect(s)")
            latest = AuditEntry.objects.filter(change_id=spec.id).exclude(state="").order_by("-id").values_list("state", flat=True).first()
            if latest != state:
                problems.append(f"{spec.id}: projection says {state}, the trail's latest entry says {latest}")
        return problems

    def events(self, run_id: str) -> list[str]:
        return list(AuditEntry.objects.filter(run_id=run_id).order_by("id").values_list("event", flat=True))

    def close(self) -> None:
        for child in self.children:
            child.close()


@pytest.fixture
def chaos(settings, unique, make_pipeline, subprocess_env, external_pg, journal, tmp_path):
    # The lock is named after the environment: a test of its own never shares a lock or a key.
    settings.FLAMINGOCK_ENVIRONMENT = f"t-{unique}"
    effects = Effects(suffix=unique, external_dsn=external_pg, journal=journal)
    effects.create()
    chaos = Chaos(unique=unique, make_pipeline=make_pipeline, subprocess_env=subprocess_env, effects=effects, directory=tmp_path / "children")
    yield chaos
    chaos.close()
    effects.drop()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone, on a free port: the one the test may kill."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def running(child: Child, predicate):
    """``predicate``, failing at once with the child's output if the child ended instead."""

    def check() -> bool:
        if child.process.poll() is not None:
            raise AssertionError(f"the child exited with {child.process.returncode}:\n{child.stdout}\n{child.stderr[-4000:]}")
        return predicate()

    return check


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat: 'T' for a stopped process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def finished(child: Child, *, timeout: float = 90) -> tuple[int, dict]:
    code = child.wait(timeout=timeout)
    try:
        return code, child.json()
    except ValueError:
        raise AssertionError(f"exit {code}, no JSON on stdout:\n{child.stdout}\nstderr:\n{child.stderr[-4000:]}") from None


def run_token(run_id: str) -> int:
    return Run.objects.values_list("fencing_token", flat=True).get(pk=run_id)


def shared_specs(prefix: str, count: int, **kwargs) -> list[Spec]:
    return [Spec(id=f"{prefix}-{n}", kind="shared", order=f"{n:04d}", **kwargs) for n in range(1, count + 1)]


# -- Redis dies mid-run ----------------------------------------------------------------------------


def test_redis_dying_mid_run_stops_the_run_before_its_next_change_and_the_next_run_resumes(chaos, private_redis):
    chaos.pipeline(shared_specs(f"redis-dies-{chaos.unique}", 10, delay=0.6))
    env = chaos.env(REDIS_URL=private_redis.url, FLAMINGOCK_LOCK_BACKEND="redis", FLAMINGOCK_LOCK_LEASE="1.5", FLAMINGOCK_HOSTNAME="host-a")
    first = chaos.run(env)
    # Several leases into the run (each change takes 0.6 s; the heartbeat extends every 0.5 s).
    wait_for(running(first, lambda: len(chaos.applied()) >= 3), timeout=60, what="three changes applied")
    private_redis.kill()

    code, output = finished(first)
    assert (code, output["status"]) == (1, "ABORTED"), output
    assert "lock lost" in output["reason"] and "heartbeat failed" in output["reason"], output["reason"]
    events = chaos.events(output["run_id"])
    assert "lock.lost" in events and events[-1] == "run.aborted", events
    lost = AuditEntry.objects.get(run_id=output["run_id"], event="lock.lost")
    assert lost.host == "host-a" and "heartbeat failed" in lost.details["reason"]
    applied_first = chaos.applied()
    assert 3 <= len(applied_first) < len(chaos.specs), "the run stopped before its next change, not at the end"
    results = {result["change_id"]: result["result"] for result in output["results"]}
    assert {change for change, result in results.items() if result == "APPLIED"} == applied_first
    assert all(results[spec.id] == "NOT_REACHED" for spec in chaos.specs if spec.id not in applied_first)
    # A shared-transaction change is APPLIED or untouched: never STARTED, never half there.
    assert not AuditEntry.objects.filter(change_id__in=[spec.id for spec in chaos.specs]).exclude(state="APPLIED").exclude(state="").exists()
    assert chaos.problems() == []
    assert Run.objects.get(pk=output["run_id"]).status == Run.Status.ABORTED

    private_redis.start()  # the same port, empty: no lock key, no holder
    code, resumed = finished(chaos.run(env))
    assert (code, resumed["status"]) == (0, "SUCCEEDED"), resumed
    assert {result["change_id"] for result in resumed["results"] if result["result"] == "APPLIED"} == {
        spec.id for spec in chaos.specs
    } - applied_first
    assert chaos.counts() == {spec.id: 1 for spec in chaos.specs}
    assert chaos.problems() == []
    assert run_token(resumed["run_id"]) > run_token(output["run_id"]), "a restarted Redis does not reset the fence"


# -- PostgreSQL connection killed mid-run ----------------------------------------------------------


def terminate_sessions(application_name: str) -> list[int]:
    """pg_terminate_backend on every session of the test database opened by the child."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [application_name],
        )
        return [pid for pid, terminated in cursor.fetchall() if terminated]


@pytest.mark.parametrize("kind", ["shared", "marker"])
def test_killed_database_sessions_end_the_run_the_ledger_tells_the_truth_and_the_next_run_finishes(chaos, kind, tmp_path):
    inside = tmp_path / f"inside-{kind}"
    prefix = f"pg-killed-{kind}-{chaos.unique}"
    chaos.pipeline(
        [
            Spec(id=f"{prefix}-1", kind=kind, order="0001", delay=0.1),
            # Makes its effect, announces it, then holds its transaction open for the kill.
            Spec(id=f"{prefix}-2", kind=kind, order="0002", announce=str(inside), hold=1.5),
            Spec(id=f"{prefix}-3", kind=kind, order="0003", delay=0.1),
        ]
    )
    # libpq names the child's sessions, so the test kills those and no others.
    application_name = f"flk-chaos-{chaos.unique}"
    env = chaos.env(FLAMINGOCK_LOCK_BACKEND="database", FLAMINGOCK_LOCK_LEASE="2", PGAPPNAME=application_name)
    first = chaos.run(env)
    wait_for(running(first, inside.exists), timeout=60, what="the second change to be inside its apply")
    assert terminate_sessions(application_name), "the child's sessions were not found in pg_stat_activity"

    code, output = finished(first)
    assert code == 1 and output["status"] in ("ABORTED", "FAILED"), output
    run = Run.objects.get(pk=output["run_id"])
    assert run.status == output["status"] and run.finished_at is not None, "the run must not be left RUNNING"
    assert chaos.events(output["run_id"])[-1] in ("run.aborted", "run.finished")
    assert chaos.counts()[f"{prefix}-1"] == 1 and f"{prefix}-1" in chaos.applied()
    assert chaos.counts()[f"{prefix}-3"] == 0 and not AuditEntry.objects.filter(change_id=f"{prefix}-3").exists()
    # No APPLIED without its effect, no effect without APPLIED (shared) or its marker (marker).
    assert chaos.problems() == []

    code, resumed = finished(chaos.run(chaos.env(FLAMINGOCK_LOCK_BACKEND="database", FLAMINGOCK_LOCK_LEASE="2")))
    assert (code, resumed["status"]) == (0, "SUCCEEDED"), resumed
    assert chaos.counts() == {spec.id: 1 for spec in chaos.specs}
    assert chaos.applied() == {spec.id for spec in chaos.specs}
    assert chaos.problems() == []


# -- a paused holder -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_a_holder_paused_before_its_commit_is_taken_over_and_refused_when_it_wakes(chaos, backend, tmp_path):
    specs = shared_specs(f"paused-{backend}-{chaos.unique}", 3, delay=0.1)
    chaos.pipeline(specs)
    paused = specs[1].id
    lock = {"FLAMINGOCK_LOCK_BACKEND": backend, "FLAMINGOCK_LOCK_LEASE": "2"}
    server = None
    if backend == "redis":
        server = RedisServer(tmp_path / "redis").start()
        lock["REDIS_URL"] = server.url
    try:
        # A stops itself inside the open shared transaction: the change applied, its APPLIED entry and COMMIT not yet sent.
        holder = chaos.run(chaos.env(**lock, FLAMINGOCK_PAUSE_AT=f"before_commit:{paused}", FLAMINGOCK_HOSTNAME="host-a"))
        wait_for(running(holder, lambda: process_state(holder.pid) == "T"), timeout=60, what="the holder to stop itself")
        # B waits out A's lease; A's idle transaction was ended by PostgreSQL at half the lease.
        code, taken_over = finished(chaos.run(chaos.env(**lock, FLAMINGOCK_HOSTNAME="host-b")))
        assert (code, taken_over["status"]) == (0, "SUCCEEDED"), taken_over
        assert process_state(holder.pid) == "T", "A stayed paused while B finished"

        holder.signal(signal.SIGCONT)
        code, woken = finished(holder)
    finally:
        if server is not None:
            server.kill()

    assert chaos.counts() == {spec.id: 1 for spec in specs}, "nothing applied twice"
    assert chaos.problems() == []
    assert code == 1 and woken["status"] == "ABORTED", woken
    # The refusal is visible: in A's own output and in the trail.
    assert "lock lost" in woken["reason"] and "stale" in woken["reason"], woken["reason"]
    paused_result = next(result for result in woken["results"] if result["change_id"] == paused)
    assert paused_result["result"] == "ABORTED"
    aborted = AuditEntry.objects.get(run_id=woken["run_id"], event="run.aborted")
    assert "stale" in aborted.reason and aborted.host == "host-a"
    assert "lock.lost" in chaos.events(woken["run_id"])
    # Each change is APPLIED once, by A before its pause or by B after it; A's paused apply left nothing.
    applied_by = dict(AuditEntry.objects.filter(change_id__in=[spec.id for spec in specs], state="APPLIED").values_list("change_id", "host"))
    assert applied_by == {specs[0].id: "host-a", paused: "host-b", specs[2].id: "host-b"}
    assert AuditEntry.objects.filter(change_id=paused, state="APPLIED").count() == 1
    assert run_token(taken_over["run_id"]) > run_token(woken["run_id"]), "B's fencing token is newer than A's"
