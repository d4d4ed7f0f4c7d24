"""Distributed execution (docs/semantics.md §6) proven with real processes: Celery workers on a Redis broker,
PostgreSQL as the audit store, a Redis lease lock, and ``kill -9``.

Every change counts its own executions on its target: a row in a table of the application
database (shared transaction), a row in a table of an external PostgreSQL (marker), or an
``effect`` line in the journal (non-transactional); the race changes also ``INCR`` a Redis counter.
Counting them afterwards says exactly what reached each target, whatever the ledger says.

Each test (and each kill trial) has its own environment, so its own pipeline lock, its own broker
key space and queue, and its own change ids: tests and trials never share anything but the servers.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings

from audit_app.models import APPLIED_STATES, AuditEntry, ChangeState
from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.pipeline.guidance import issue_guidance
from changes_app.pipeline.plan import Action
from changes_app.targets.base import target_systems
from tests.conftest import manage
from tests.support.workers import Broker, Worker, wait_for, workers_start, workers_stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]

TARGET_OF = {"shared": "app-db", "marker": "ext-pg", "journal": "journal"}
#: Small leases keep the kill trials fast: the lock of a dead worker expires within LEASE seconds.
LEASE = 2.0
#: The reaper's "no heartbeat for this long" (the heartbeat beats every LEASE / 3).
HEARTBEAT_TIMEOUT = 1.0
#: The broker's visibility timeout of the trials: the time limit plus a margin, as in production.
RUN_TIME_LIMIT, VISIBILITY_MARGIN = 2, 1
VISIBILITY = RUN_TIME_LIMIT + VISIBILITY_MARGIN
TRIALS = int(os.environ.get("FLAMINGOCK_KILL_TRIALS", "10"))
#: Which change each boundary can stop at (None: the boundary belongs to the run, not a change).
BOUNDARY_CHANGES = {
    "after_claim": [None],
    "after_started": ["marker", "journal"],
    "before_apply": ["shared", "marker", "journal"],
    "after_target_commit": ["marker"],
    "after_applied": ["shared", "marker", "journal"],
    "before_ack": [None],
}


# -- counted changes -------------------------------------------------------------------------------


def counted_change(
    change_id: str, kind: str, *, table: str, delay: float = 0.0, counter: bool = False, rollback: bool = False, environment: str = ""
) -> str:
    """A change that records each execution on its own target (and, with ``counter``, in Redis)."""
    half = delay / 2
    lines = [
        "import os",
        "import time",
        "",
        "from changes_app.definitions import Change",
        "",
        "",
        "class Counted(Change):",
        f"    id = {change_id!r}",
        '    author = "worker-tests"',
        f"    target = {TARGET_OF[kind]!r}",
        *([f"    environments = [{environment!r}]"] if environment else []),
        "",
    ]
    if kind == "journal":
        lines.append("    def apply(self, journal, context):")
        lines.append(f"        time.sleep({half})")
        lines.append('        journal.write(kind="effect", change=context.change_id, run=str(context.run_id), pid=os.getpid())')
    else:
        lines.append("    def apply(self, cursor, context):")
        lines.append(f"        time.sleep({half})")
        lines.append(f'        cursor.execute("INSERT INTO {table} (change_id, run_id, pid, host) VALUES (%s, %s, %s, %s)",')
        lines.append('                       [context.change_id, str(context.run_id), os.getpid(), os.environ.get("FLAMINGOCK_HOSTNAME", "")])')
    if counter:
        lines.append("        import redis")
        lines.append("")
        lines.append('        key = os.environ["FLAMINGOCK_BROKER_KEYPREFIX"] + "count:" + context.change_id')
        lines.append('        redis.Redis.from_url(os.environ["REDIS_URL"]).incr(key)')
    lines.append(f"        time.sleep({half})")
    if rollback and kind != "journal":
        lines += [
            "",
            "    def rollback(self, cursor, context):",
            f'        cursor.execute("DELETE FROM {table} WHERE change_id = %s", [context.change_id])',
        ]
    return "\n".join(lines) + "\n"


class Effects:
    """The effect tables of the application database and the external PostgreSQL, and the journal."""

    DDL = "CREATE TABLE {} (change_id varchar(200) NOT NULL, run_id varchar(64) NOT NULL, pid integer NOT NULL, host varchar(200) NOT NULL, at timestamptz NOT NULL DEFAULT now())"

    def __init__(self, *, suffix: str, external_dsn: str, journal):
        self.table = f"worker_fx_{suffix}"
        self.external_dsn = external_dsn
        self.journal = journal

    def create(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(self.DDL.format(self.table))
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            external.execute(self.DDL.format(self.table))
        # The marker table is created on first use; two environments creating it at the same moment
        # make one CREATE TABLE IF NOT EXISTS fail (a PostgreSQL catalogue race), so create it first.
        target_systems()["ext-pg"].marker_lookup(change_id="", generation=0)

    def drop(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            external.execute(f"DROP TABLE IF EXISTS {self.table}")

    def counts(self) -> Counter:
        """Executions that reached a target, per change id."""
        found: Counter = Counter()
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT change_id, count(*) FROM {self.table} GROUP BY change_id")
            found.update(dict(cursor.fetchall()))
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            found.update(dict(external.execute(f"SELECT change_id, count(*) FROM {self.table} GROUP BY change_id").fetchall()))
        found.update(entry["change"] for entry in self.journal.entries() if entry.get("kind") == "effect")
        return found


@pytest.fixture
def effects(unique, external_pg, journal):
    found = Effects(suffix=unique, external_dsn=external_pg, journal=journal)
    found.create()
    yield found
    found.drop()


@pytest.fixture
def broker(unique):
    used = Broker(unique)
    yield used
    used.cleanup(f"pipeline:t-{unique}")


@pytest.fixture
def redis_settings(settings, broker):
    """The test process sees the broker's Redis as the lock store, with the trials' small lease."""
    settings.REDIS_URL = broker.url
    settings.FLAMINGOCK_LOCK = {"backend": "", "lease_seconds": LEASE, "wait_seconds": 10.0}
    settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT
    return settings


def worker_env(subprocess_env, broker: Broker, *, environment: str, host: str, stages: list[str], **extra) -> dict[str, str]:
    return subprocess_env(
        **broker.env(),
        FLAMINGOCK_ENVIRONMENT=environment,
        FLAMINGOCK_HOSTNAME=host,
        FLAMINGOCK_STAGES=",".join(stages),
        FLAMINGOCK_DISCOVER_APPS="0",
        **extra,
    )


def finished(run_id) -> bool:
    return Run.objects.get(pk=run_id).finished


def applied_entries(change_ids) -> Counter:
    return Counter(AuditEntry.objects.filter(change_id__in=list(change_ids), state=S.APPLIED).values_list("change_id", flat=True))


def describe(run: Run) -> str:
    return f"run {run.id} {run.status}: {run.status_reason} {[(r['change_id'], r['result'], r['reason'], r['error']) for r in run.results]}"


def logs(workers: list[Worker]) -> str:
    return "\n".join(f"--- {worker.name}\n{worker.log[-3000:]}" for worker in workers)


# -- the race --------------------------------------------------------------------------------------


RACE_CHANGES = 200


def race_pipeline(make_pipeline, unique: str, effects: Effects) -> list[str]:
    """200 changes: 160 on the application database, 20 on the external PostgreSQL, 20 in the journal."""
    kinds = ["shared"] * 8 + ["marker", "journal"]
    files, ids = {}, []
    for number in range(1, RACE_CHANGES + 1):
        kind = kinds[number % len(kinds)]
        change_id = f"race-{number:03d}-{kind}-{unique}"
        files[f"{number:04d}_{kind}_{number}.py"] = counted_change(change_id, kind, table=effects.table, counter=True)
        ids.append(change_id)
    pipeline = make_pipeline({f"race_{unique}": files})
    assert pipeline.valid, pipeline.problems
    return ids


def eight_workers_on_two_hosts(subprocess_env, broker, settings, tmp_path, unique) -> tuple[list[Worker], dict[str, str]]:
    hosts = {"a": f"host-a-{unique}", "b": f"host-b-{unique}"}
    names = [f"w{number}-{unique}@{hosts['a' if number <= 4 else 'b']}" for number in range(1, 9)]
    environment = settings.FLAMINGOCK_ENVIRONMENT

    def env_for(name: str) -> dict[str, str]:
        return worker_env(subprocess_env, broker, environment=environment, host=name.split("@")[1], stages=settings.FLAMINGOCK_STAGES)

    return workers_start(names, env_for=env_for, log_dir=tmp_path / "workers"), hosts


def assert_each_change_applied_once(ids: list[str], effects: Effects, broker: Broker) -> None:
    counts, counters, entries = effects.counts(), broker.counters("count:"), applied_entries(ids)
    assert {change_id: counts[change_id] for change_id in ids if counts[change_id] != 1} == {}, "effects on the targets"
    assert {change_id: counters.get(change_id, 0) for change_id in ids if counters.get(change_id, 0) != 1} == {}, "Redis counters"
    assert {change_id: entries[change_id] for change_id in ids if entries[change_id] != 1} == {}, "APPLIED entries"


def test_eight_distinct_runs_on_eight_workers_apply_each_of_200_changes_exactly_once(
    make_pipeline, redis_settings, subprocess_env, broker, effects, tmp_path, unique
):
    settings = redis_settings
    settings.FLAMINGOCK_ENVIRONMENT = f"t-{unique}"
    ids = race_pipeline(make_pipeline, unique, effects)
    workers, hosts = eight_workers_on_two_hosts(subprocess_env, broker, settings, tmp_path, unique)
    try:
        with broker.publishing(), transaction.atomic():
            # Published together when the transaction commits: the eight workers get them at once.
            runs = [services.run_queue(actor=cli_actor(), source=Run.Source.CLI) for _ in range(8)]
        wait_for(lambda: all(finished(run.id) for run in runs), timeout=120, interval=0.25, what="the eight runs to finish")
    finally:
        workers_stop(workers)
    runs = [Run.objects.get(pk=run.id) for run in runs]
    statuses = Counter(run.status for run in runs)
    assert statuses[Run.Status.SUCCEEDED] == 1, (statuses, [run.status_reason for run in runs], logs(workers))
    assert set(statuses) <= {Run.Status.SUCCEEDED, Run.Status.LOCKED, Run.Status.NO_CHANGES}, statuses
    winner = next(run for run in runs if run.status == Run.Status.SUCCEEDED)
    assert winner.counts == {"APPLIED": RACE_CHANGES}
    assert_each_change_applied_once(ids, effects, broker)
    for loser in runs:
        if loser.status == Run.Status.LOCKED:
            assert f"run {winner.id}" in loser.status_reason, loser.status_reason
        elif loser.status == Run.Status.NO_CHANGES:
            assert loser.counts == {"ALREADY_APPLIED": RACE_CHANGES}, loser.counts
    # Every worker took one run, on both hosts, and each wrote what it did under its own host.
    started_on = AuditEntry.objects.filter(run_id__in=[run.id for run in runs], event="run.started").values_list("host", "pid")
    assert len(started_on) == 8 and len(set(started_on)) == 8, started_on
    assert {host for host, _ in started_on} == set(hosts.values())
    applied_on = set(AuditEntry.objects.filter(change_id__in=ids, state=S.APPLIED).values_list("host", "pid"))
    assert len(applied_on) == 1 and applied_on <= set(started_on)
    print(
        f"\nrace: 8 runs on 8 workers; the winner applied {RACE_CHANGES} changes in {(winner.finished_at - winner.started_at).total_seconds():.1f} s; "
        f"the others: {dict(Counter(run.status for run in runs if run is not winner))}"
    )


def test_one_run_delivered_to_eight_workers_at_once_is_executed_by_one(
    make_pipeline, redis_settings, subprocess_env, broker, effects, tmp_path, unique
):
    from changes_app.tasks import run_execute_task

    settings = redis_settings
    settings.FLAMINGOCK_ENVIRONMENT = f"t-{unique}"
    ids = race_pipeline(make_pipeline, unique, effects)
    workers, _ = eight_workers_on_two_hosts(subprocess_env, broker, settings, tmp_path, unique)
    try:
        with broker.publishing(), transaction.atomic():
            run = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
            for _ in range(7):  # the same task delivered seven more times (a broker redelivering, a retry)
                transaction.on_commit(lambda: run_execute_task.apply_async(args=[str(run.id)], task_id=run.task_id))
        wait_for(lambda: sum(len(worker.finished(run.task_id)) for worker in workers) == 8, timeout=120, interval=0.25, what="eight deliveries")
    finally:
        workers_stop(workers)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, (run.status_reason, logs(workers))
    assert sum(worker.received(run.task_id) for worker in workers) == 8
    assert AuditEntry.objects.filter(run_id=run.id, event="run.started").count() == 1
    assert AuditEntry.objects.filter(run_id=run.id, event="lock.acquired").count() == 1
    assert_each_change_applied_once(ids, effects, broker)
    executed_by = [worker for worker in workers if worker.finished(run.task_id) == [Run.Status.SUCCEEDED]]
    assert len(executed_by) == 1, [(worker.name, worker.finished(run.task_id)) for worker in workers]
    started = AuditEntry.objects.get(run_id=run.id, event="run.started")
    assert (started.host, started.pid) == (executed_by[0].name.split("@")[1], executed_by[0].pid)
    # The seven duplicates found the run already claimed and returned its status without acting.
    others = [status for worker in workers if worker is not executed_by[0] for status in worker.finished(run.task_id)]
    assert len(others) == 7 and set(others) <= {Run.Status.RUNNING, Run.Status.SUCCEEDED}, others


# -- queue-to-start latency ------------------------------------------------------------------------


LATENCY_RUNS = int(os.environ.get("FLAMINGOCK_LATENCY_RUNS", "30"))


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def test_a_queued_run_starts_its_first_change_within_a_second_on_an_idle_worker(
    make_pipeline, redis_settings, subprocess_env, broker, effects, tmp_path, unique
):
    """Queue, run, undo, release, again: each pipeline run has one change to apply."""
    settings = redis_settings
    settings.FLAMINGOCK_ENVIRONMENT = f"t-{unique}"
    change_id = f"latency-{unique}"
    make_pipeline({f"latency_{unique}": {"0001_latency.py": counted_change(change_id, "shared", table=effects.table, rollback=True)}})
    env = worker_env(subprocess_env, broker, environment=settings.FLAMINGOCK_ENVIRONMENT, host=f"host-{unique}", stages=settings.FLAMINGOCK_STAGES)
    workers = workers_start([f"w1-{unique}@host-{unique}"], env_for=lambda name: env, log_dir=tmp_path / "workers")

    def queued(kind: str = Run.Kind.PIPELINE) -> Run:
        with broker.publishing():
            run = services.run_queue(
                actor=cli_actor(), source=Run.Source.CLI, kind=kind, change_id="" if kind == Run.Kind.PIPELINE else change_id, reason="latency cycle"
            )
        wait_for(lambda: finished(run.id), timeout=30, interval=0.01, what=f"{kind} run {run.id}")
        return Run.objects.get(pk=run.id)

    def latency(run: Run) -> float:
        first = AuditEntry.objects.filter(run_id=run.id).exclude(change_id="").order_by("id").first()
        return (first.created_at - run.created_at).total_seconds()

    try:
        # The first run comes from the CLI (``run --async``) and finds a cold worker: reported apart.
        cli = manage("flamingock", "run", "--async", "--json", env=env)
        assert cli.returncode == 0, cli.stderr
        first = json.loads(cli.stdout)
        wait_for(lambda: finished(first["run_id"]), timeout=30, what="the CLI's queued run")
        first = Run.objects.get(pk=first["run_id"])
        assert first.status == Run.Status.SUCCEEDED, first.status_reason
        cold = latency(first)
        samples, claims = [], []
        for _ in range(LATENCY_RUNS):
            assert queued(Run.Kind.UNDO).status == Run.Status.SUCCEEDED
            assert queued(Run.Kind.REAPPLY).status == Run.Status.SUCCEEDED
            run = queued()
            assert run.status == Run.Status.SUCCEEDED, run.status_reason
            samples.append(latency(run))
            claims.append((run.started_at - run.created_at).total_seconds())
    finally:
        workers_stop(workers)
    assert effects.counts()[change_id] == 1
    assert applied_entries([change_id])[change_id] == LATENCY_RUNS + 1
    median, p95 = statistics.median(samples), percentile(samples, 0.95)
    print(
        f"\nqueue-to-first-change latency over {len(samples)} runs (Redis broker, idle worker): "
        f"median {median * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, min {min(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms; "
        f"cold worker (first run, from the CLI) {cold * 1000:.1f} ms; of which queued to claimed: median {statistics.median(claims) * 1000:.1f} ms, "
        f"p95 {percentile(claims, 0.95) * 1000:.1f} ms"
    )
    assert p95 < 1.0, samples


# -- the kill matrix -------------------------------------------------------------------------------


@dataclass
class Trial:
    """One worker killed once: its own environment, pipeline, queue and changes."""

    index: int
    boundary: str  # a fault-injection boundary, or "random" for kill -9 from outside
    crash_kind: str | None
    unique: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    kill_after: float = 0.0
    broker: Broker | None = None
    first: Worker | None = None
    second: Worker | None = None
    run: Run | None = None
    recovery: Run | None = None
    #: What was true the moment the first worker died.
    status_at_death: str = ""
    unacked_at_death: int = 0
    #: Each change's latest state when the worker died ("-" for none).
    states_at_death: dict[str, str] = field(default_factory=dict)
    queued_at_death: int = 0
    entries_before_redelivery: int = 0

    @property
    def environment(self) -> str:
        return f"t-{self.unique}"

    @property
    def ids(self) -> dict[str, str]:
        return {kind: f"{kind}-{self.unique}" for kind in ("shared", "marker", "journal")}

    @property
    def crash_at(self) -> str:
        if self.boundary == "random":
            return ""
        return self.boundary + (f":{self.ids[self.crash_kind]}" if self.crash_kind else "")

    def scope(self):
        return override_settings(FLAMINGOCK_ENVIRONMENT=self.environment)


def trials_run(trials: list[Trial], *, make_pipeline, settings, subprocess_env, effects: Effects, tmp_path) -> None:
    """Kill one fresh worker per trial, reap, redeliver to a second fresh worker, run again.

    One code base, many environments: the pipeline has a stage per trial whose changes run only in
    that trial's environment, so every worker sees the same pipeline and the same catalogue.
    """
    # Changes that take a while give a kill from outside a chance to land inside one.
    delay = 0.3 if trials[0].boundary == "random" else 0.0
    stages = {}
    for trial in trials:
        stages[f"k_{trial.unique}"] = {
            f"000{number}_{kind}.py": counted_change(trial.ids[kind], kind, table=effects.table, delay=delay, environment=trial.environment)
            for number, kind in enumerate(("shared", "marker", "journal"), start=1)
        }
        trial.broker = Broker(trial.unique)
    assert make_pipeline(stages).valid
    by_name: dict[str, tuple[Trial, str]] = {}

    def env_for(name: str) -> dict[str, str]:
        trial, crash_at = by_name[name]
        extra = {"FLAMINGOCK_CRASH_AT": crash_at} if crash_at else {}
        return worker_env(
            subprocess_env,
            trial.broker,
            environment=trial.environment,
            host=f"host-{trial.unique}",
            stages=settings.FLAMINGOCK_STAGES,
            FLAMINGOCK_LOCK_LEASE=str(LEASE),
            FLAMINGOCK_LOCK_WAIT="5",
            FLAMINGOCK_RUN_TIME_LIMIT=str(RUN_TIME_LIMIT),
            FLAMINGOCK_BROKER_VISIBILITY_MARGIN=str(VISIBILITY_MARGIN),
            **extra,
        )

    def start(role: str, crash: bool) -> list[Worker]:
        names = []
        for trial in trials:
            name = f"{role}-{trial.unique}@host-{trial.unique}"
            by_name[name] = (trial, trial.crash_at if crash else "")
            names.append(name)
        return workers_start(names, env_for=env_for, log_dir=tmp_path / "workers")

    firsts = start("first", crash=True)
    seconds: list[Worker] = []
    timers: list[threading.Timer] = []
    try:
        for trial, worker in zip(trials, firsts, strict=True):
            trial.first = worker
            with trial.scope(), trial.broker.publishing():
                trial.run = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
            if trial.boundary == "random":
                timers.append(threading.Timer(trial.kill_after, trial.first.kill))
                timers[-1].start()
        # Each first worker dies: at its boundary, or killed from outside at its random moment.
        deadline = time.monotonic() + 30
        while any(trial.first.alive() for trial in trials):
            assert time.monotonic() < deadline, "a worker never reached its crash point:\n" + logs([t.first for t in trials if t.first.alive()])
            time.sleep(0.01)
        for timer in timers:
            timer.join()
        for trial in trials:
            assert trial.first.process.returncode == -9, (trial.crash_at, trial.first.log[-3000:])
            trial.status_at_death = Run.objects.get(pk=trial.run.id).status
            trial.unacked_at_death, trial.queued_at_death = trial.broker.unacked(), trial.broker.queued()
            states = dict(ChangeState.objects.filter(change_id__in=trial.ids.values()).values_list("change_id", "state"))
            trial.states_at_death = {kind: states.get(change_id, "-") for kind, change_id in trial.ids.items()}
        # The reaper settles the dead workers' RUNNING runs once their lease and heartbeat are gone.
        for trial in trials:
            if trial.status_at_death != Run.Status.RUNNING:
                continue
            with trial.scope():
                wait_for(
                    lambda trial=trial: reap(trial), timeout=LEASE + HEARTBEAT_TIMEOUT + 10, interval=0.2, what=f"the reaper to abort {trial.run.id}"
                )
        for trial in trials:
            if trial.status_at_death == Run.Status.QUEUED and not (trial.unacked_at_death or trial.queued_at_death):
                # Killed between taking the message and recording it as unacknowledged: the broker
                # lost it. The reaper queues such a run again (its QUEUED timeout made zero here).
                with trial.scope(), override_settings(FLAMINGOCK_RUN_QUEUED_TIMEOUT=0), trial.broker.publishing():
                    assert str(trial.run.id) in services.runs_reap()["requeued"]
                trial.queued_at_death = trial.broker.queued()
        for trial in trials:
            trial.entries_before_redelivery = AuditEntry.objects.filter(run_id=trial.run.id).count()
        # A fresh worker restores what the dead one left unacknowledged once the visibility timeout passed.
        last_death = max(trial.first.exited_at for trial in trials)
        time.sleep(max(0.0, last_death + VISIBILITY + 0.3 - time.monotonic()))
        seconds = start("second", crash=False)
        for trial, worker in zip(trials, seconds, strict=True):
            trial.second = worker
        for trial in trials:
            if trial.unacked_at_death or trial.queued_at_death:
                wait_for(lambda trial=trial: trial.second.finished(trial.run.task_id), timeout=30, what=f"the redelivery of {trial.run.id}")
        for trial in trials:
            with trial.scope(), trial.broker.publishing():
                trial.recovery = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
        for trial in trials:
            wait_for(lambda trial=trial: finished(trial.recovery.id), timeout=30, what=f"the recovery run of {trial.environment}")
    finally:
        for timer in timers:
            timer.cancel()
        workers_stop([*firsts, *seconds], graceful=False)
        for trial in trials:
            trial.broker.cleanup(f"pipeline:{trial.environment}")
    for trial in trials:
        trial.run.refresh_from_db()
        trial.recovery.refresh_from_db()


def reap(trial: Trial) -> bool:
    """One pass of the reaper in the trial's environment: has the trial's run been settled?"""
    return str(trial.run.id) in services.runs_reap()["aborted"] or finished(trial.run.id)


def outcome(trial: Trial, effects: Effects, counts: Counter) -> dict[str, str]:
    """Check the guarantee (docs/semantics.md §1) for one trial; returns each change's outcome for the report."""
    ids = trial.ids
    states = {row.change_id: row for row in ChangeState.objects.filter(change_id__in=ids.values())}
    entries = applied_entries(ids.values())
    where = f"trial {trial.index} ({trial.boundary} {trial.crash_kind or ''}, run {trial.run.id}, recovery {trial.recovery.id})"
    found = {}
    with trial.scope():
        plan = services.pipeline_plan()
    for kind, change_id in ids.items():
        count = counts[change_id]
        assert count <= 1, f"{where}: {change_id} took effect {count} times"
        row = states.get(change_id)
        assert row is not None, f"{where}: {change_id} never ran ({trial.recovery.status}: {trial.recovery.status_reason})"
        if row.state in APPLIED_STATES:
            assert count == 1 and entries[change_id] == 1, f"{where}: {change_id} {row.state} with {count} effects, {entries[change_id]} APPLIED"
            history = list(AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("id").values_list("state", "details"))
            reconciled = any(details.get("reconciled") for state, details in history if state == S.APPLIED)
            found[kind] = "RECONCILED" if reconciled else ("APPLIED after reconciliation" if S.ROLLED_BACK in [s for s, _ in history] else "APPLIED")
            continue
        # Anything else must be an issue that says what to do.
        item = plan.item(change_id)
        assert item.action == Action.MANUAL_INTERVENTION, f"{where}: {change_id} left {row.state}, next action {item.action}"
        guidance = issue_guidance(item)
        assert any("fix" in step for step in guidance), guidance
        # Only the non-transactional change can be left uncertain; its effect may or may not be there.
        assert kind == "journal" and row.state == S.STARTED, f"{where}: {change_id} {row.state} with {count} effects"
        found[kind] = f"ISSUE (STARTED, {'effect present' if count else 'no effect'}, guidance)"
    return found


def assert_redelivery_did_nothing(trial: Trial) -> None:
    """The task the dead worker never acknowledged came back, found the run finished, and left it."""
    second = trial.second.finished(trial.run.task_id)
    if trial.status_at_death == Run.Status.QUEUED:
        # Never claimed: the redelivered (or still queued) task is the first execution of the run.
        assert second and second[0] in Run.FINISHED, second
        return
    if trial.unacked_at_death:
        assert second == [trial.run.status], (second, trial.run.status, trial.second.log[-3000:])
    else:
        assert second == [], "an acknowledged task was delivered again"
    assert AuditEntry.objects.filter(run_id=trial.run.id).count() == trial.entries_before_redelivery


def reaped(trial: Trial) -> bool:
    return AuditEntry.objects.filter(run_id=trial.run.id, event="run.aborted", actor="service:reaper").exists()


@pytest.mark.parametrize("boundary", list(BOUNDARY_CHANGES))
def test_worker_killed_at_a_boundary_never_applies_a_change_twice(boundary, make_pipeline, redis_settings, subprocess_env, effects, tmp_path):
    kinds = BOUNDARY_CHANGES[boundary]
    trials = [Trial(index, boundary, kinds[index % len(kinds)]) for index in range(TRIALS)]
    trials_run(trials, make_pipeline=make_pipeline, settings=redis_settings, subprocess_env=subprocess_env, effects=effects, tmp_path=tmp_path)
    counts = effects.counts()
    report = Counter()
    for trial in trials:
        found = outcome(trial, effects, counts)
        assert_redelivery_did_nothing(trial)
        ids = trial.ids
        if boundary == "before_ack":
            assert trial.status_at_death == Run.Status.SUCCEEDED and trial.run.status == Run.Status.SUCCEEDED, describe(trial.run)
            assert trial.unacked_at_death == 1, "acks_late: the finished task was not acknowledged before the kill"
            assert trial.recovery.status == Run.Status.NO_CHANGES
        else:
            assert trial.status_at_death == Run.Status.RUNNING
            assert trial.run.status == Run.Status.ABORTED and reaped(trial), (trial.run.status, trial.run.status_reason)
            assert trial.unacked_at_death == 1
        crashed = ids.get(trial.crash_kind, "")
        if boundary in ("after_started", "before_apply") and trial.crash_kind == "marker":
            assert found["marker"] == "APPLIED after reconciliation"
        elif boundary in ("after_started", "before_apply") and trial.crash_kind == "journal":
            assert found["journal"] == "ISSUE (STARTED, no effect, guidance)" and trial.recovery.status == Run.Status.BLOCKED
        elif boundary == "after_target_commit":
            assert found["marker"] == "RECONCILED"
        elif boundary == "after_applied":
            assert AuditEntry.objects.get(change_id=crashed, state=S.APPLIED).run_id == trial.run.id
        if not any(value.startswith("ISSUE") for value in found.values()):
            assert set(found.values()) <= {"APPLIED", "RECONCILED", "APPLIED after reconciliation"}
            assert trial.recovery.status in (Run.Status.SUCCEEDED, Run.Status.NO_CHANGES)
        report[(trial.crash_kind or "-", trial.run.status, trial.recovery.status, tuple(sorted(found.items())))] += 1
    print(f"\nkill matrix {boundary}: {len(trials)} trials")
    for key, number in sorted(report.items()):
        print(f"  {number} x {key}")


def test_worker_killed_at_random_moments_never_applies_a_change_twice(make_pipeline, redis_settings, subprocess_env, effects, tmp_path):
    chooser = random.Random(os.environ.get("FLAMINGOCK_KILL_SEED") or None)
    trials = [Trial(index, "random", None, kill_after=chooser.uniform(0.0, 1.2)) for index in range(TRIALS)]
    trials_run(trials, make_pipeline=make_pipeline, settings=redis_settings, subprocess_env=subprocess_env, effects=effects, tmp_path=tmp_path)
    counts = effects.counts()
    report = Counter()
    for trial in trials:
        found = outcome(trial, effects, counts)
        assert_redelivery_did_nothing(trial)
        if trial.status_at_death == Run.Status.RUNNING:
            assert trial.run.status == Run.Status.ABORTED and reaped(trial)
        assert trial.recovery.status in (Run.Status.SUCCEEDED, Run.Status.NO_CHANGES, Run.Status.BLOCKED), trial.recovery.status_reason
        died = "/".join(trial.states_at_death.values())
        report[(f"{trial.kill_after:.2f}s", trial.status_at_death, died, trial.run.status, trial.recovery.status, tuple(sorted(found.items())))] += 1
    print(f"\nkill matrix random: {len(trials)} trials")
    for key, number in sorted(report.items()):
        print(f"  {number} x {key}")
