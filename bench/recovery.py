"""Recovery times (docs/reliability.md, "Recovery times"): how long a user waits after a failure.

    python bench/recovery.py                  # 10 trials of each scenario (about 10 minutes on 2 cores)
    python bench/recovery.py --trials 3       # a quick look
    python bench/recovery.py --only pause     # one scenario: kill9, pause or redis

Three scenarios, each timed from the failure to the moment the product is usable again, on a
throwaway migrated PostgreSQL audit database, a throwaway PostgreSQL target database and a private
``redis-server`` that this command starts, kills and restarts (never the machine's shared Redis):

- ``kill9``: a Celery worker is ``kill -9``-ed inside a change of a queued run, a second worker
  running beside it. Timed: the kill to the run leaving RUNNING (ABORTED by the reaper, or finished
  by a redelivery, whichever comes first). The reaper runs every ``--reaper`` seconds, as the beat
  task ``flamingock.runs_reap`` does (every 60 s by default).
- ``pause``: runner A stops (SIGSTOP) inside a marker change's open transaction on the target
  database; runner B starts at that moment. Timed: the pause to B holding the lock (its
  ``lock.acquired`` entry), and to B's run finished.
- ``redis``: the Redis that is the broker and the lock store is killed and started again, empty,
  with a worker running; a run is queued as soon as it answers. Timed: the restart to that run
  finished, and within it the queueing to the worker picking the run up.

The settings that bound each time (lease, heartbeat timeout, reaper interval, visibility timeout)
are short here so that 10 trials fit in minutes; the report gives them beside the times, and
docs/reliability.md the formula that scales them to production settings. Writes recovery.md and
recovery.json under bench/results/recovery-<UTC time>/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, log, standalone_context, summary  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.workers import Worker, wait_for  # noqa: E402

SCENARIOS = ("kill9", "pause", "redis")

CHANGE = """
import time

from changes_app.definitions import Change


class Timed(Change):
    id = "{id}"
    author = "bench"
    target = "{target}"

    def apply(self, cursor, context):
        cursor.execute("INSERT INTO bench_effect (change_id, run_id) VALUES (%s, %s)", [context.change_id, str(context.run_id)])
        time.sleep({sleep})
"""


GATE = """
import os
import time

from changes_app.definitions import Change


class Gate(Change):
    id = "{id}"
    author = "bench"
    target = "journal"

    def apply(self, journal, context):
        # Holds the first runner here, no transaction open, until the second one asks for the lock.
        deadline = time.monotonic() + 120
        while not os.path.exists({go!r}) and time.monotonic() < deadline:
            time.sleep(0.02)
        journal.write(change=context.change_id)
"""


class Bench:
    """The databases, the private Redis, and the processes of every trial."""

    def __init__(self, context, options):
        self.context, self.options = context, options
        self.workdir = context.workdir
        self.audit = context.pg.database_create("recovery_audit")
        self.target = context.pg.database_create("recovery_target")
        self.redis = RedisServer(self.workdir / "redis").start()
        context.cleanups.callback(self.redis.kill)
        self.trial_number = 0
        for database in (self.audit, self.target):
            context.pg.execute(database, "CREATE TABLE bench_effect (change_id varchar(200) NOT NULL, run_id varchar(64) NOT NULL)")
        log(f"migrating {self.audit}")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=self.env("migrate", stages=""), cwd=REPO, check=True)

    @property
    def settings(self) -> dict[str, float]:
        return {
            "lease_s": self.options.lease,
            "heartbeat_every_s": round(self.options.lease / 3, 3),
            "heartbeat_timeout_s": self.options.heartbeat_timeout,
            "reaper_interval_s": self.options.reaper,
            "idle_transaction_limit_s": self.options.lease / 2,
            "visibility_timeout_s": 6 * 3600 + 3600,
        }

    def env(self, environment: str, *, stages: str, **extra: str) -> dict[str, str]:
        env = self.context.base_env()
        targets = {
            "app-db": {"kind": "django", "alias": "default"},
            "ext-pg": {"kind": "postgres", "dsn_env": "BENCH_TARGET_DSN"},
            "journal": {"kind": "generic", "factory": "tests.support.targets.journal_factory", "provides": ["journal"]},
        }
        env.update(
            DATABASE_URL=self.context.pg.database_url(self.audit).replace("postgresql://", "postgres://", 1),
            DJANGO_SETTINGS_MODULE="flamingock_site.settings",
            PYTHONPATH=os.pathsep.join([str(self.workdir / "pipelines"), str(REPO)]),
            BENCH_TARGET_DSN=self.context.pg.database_url(self.target),
            FLAMINGOCK_TEST_JOURNAL=str(self.workdir / "journal.jsonl"),
            FLAMINGOCK_TARGETS_JSON=json.dumps(targets),
            FLAMINGOCK_ENVIRONMENT=environment,
            FLAMINGOCK_DISCOVER_APPS="0",
            FLAMINGOCK_STAGES=stages,
            FLAMINGOCK_LOCK_LEASE=str(self.options.lease),
            FLAMINGOCK_LOCK_WAIT="120",
            FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT=str(self.options.heartbeat_timeout),
            REDIS_URL=self.redis.url,
            FLAMINGOCK_BROKER_KEYPREFIX=f"bench-recovery:{environment}:",
            FLAMINGOCK_QUEUE=f"bench-recovery-{environment}",
            **extra,
        )
        return env

    def pipeline(self, changes: list[tuple[str, str, float]], *, gate: Path | None = None) -> str:
        """A stage package of (id, target, seconds the apply sleeps) changes, after a gate change
        waiting for the file ``gate`` if given; returns ``main=<package>``."""
        self.trial_number += 1
        package = f"bench_recovery_{os.getpid()}_{self.trial_number}"
        directory = self.workdir / "pipelines" / package
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text("")
        if gate is not None:
            (directory / "0000_gate.py").write_text(GATE.format(id=f"{package}-gate", go=str(gate)).lstrip())
        for number, (change_id, target, sleep) in enumerate(changes, start=1):
            (directory / f"{number:04d}_c.py").write_text(textwrap.dedent(CHANGE.format(id=change_id, target=target, sleep=sleep)).lstrip())
        return f"main={package}"

    def manage(self, *args: str, env: dict[str, str], wait: bool = True, log_name: str = "cli") -> subprocess.Popen:
        out = open(self.workdir / f"{log_name}-{time.monotonic():.6f}.out", "w+", encoding="utf-8")  # noqa: SIM115
        process = subprocess.Popen([sys.executable, "manage.py", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        process.output = out  # type: ignore[attr-defined]
        if wait:
            process.wait(timeout=180)
        return process

    @staticmethod
    def output(process: subprocess.Popen) -> str:
        process.output.seek(0)  # type: ignore[attr-defined]
        return process.output.read()  # type: ignore[attr-defined]

    def json_of(self, process: subprocess.Popen) -> dict:
        text = self.output(process)
        return json.loads(text[text.index("{") :])

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self.context.pg.database_url(self.audit), autocommit=True) as connection:
            return connection.execute(sql, params or []).fetchall()

    def run_row(self, run_id: str) -> dict:
        columns = ("status", "pid", "current_change", "status_reason", "created_at", "started_at", "finished_at")
        row = self.query(f"SELECT {', '.join(columns)} FROM changes_app_run WHERE id = %s", [run_id])
        return dict(zip(columns, row[0], strict=True)) if row else {}

    def reaper(self, env: dict[str, str]) -> subprocess.Popen:
        """The beat task's work, every ``--reaper`` seconds, in a process of its own."""
        code = (
            "import time, django; django.setup()\n"
            "from changes_app.services import runs_reap\n"
            f"while True:\n    runs_reap()\n    time.sleep({self.options.reaper})\n"
        )
        out = open(self.workdir / f"reaper-{time.monotonic():.6f}.out", "w", encoding="utf-8")  # noqa: SIM115
        return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def queue(self, env: dict[str, str]) -> str:
        """Queue a run as ``flamingock run --async`` does (``run_queue``), from a process of its own.

        Not through the command line itself: while this was written, ``run --async`` failed in the
        working tree (the command line starts without django-celery-beat, and Celery's import of the
        admin needs it), a problem of the tree, not of what is measured here."""
        code = (
            "import django; django.setup()\n"
            "from changes_app import services\n"
            "from changes_app.governance.identity import cli_actor\n"
            "from changes_app.models import Run\n"
            "print(services.run_queue(actor=cli_actor(), source=Run.Source.CLI).id)\n"
        )
        queued = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        if queued.returncode != 0:
            raise RuntimeError(f"queueing exited {queued.returncode}:\n{queued.stdout}\n{queued.stderr[-3000:]}")
        return queued.stdout.strip().splitlines()[-1]

    # -- scenarios --------------------------------------------------------------------------------

    def kill9(self, index: int) -> dict:
        environment = f"bench-kill9-{index}"
        stages = self.pipeline([(f"kill9-{index}-slow", "app-db", 60.0)])
        env = self.env(environment, stages=stages)
        reaper = self.reaper(env)
        workers = [Worker(f"w{n}-{environment}@bench", env=env, log_dir=self.workdir / "workers").start() for n in (1, 2)]
        try:
            wait_for(lambda: all(worker.ready for worker in workers), timeout=120, interval=0.1, what="workers ready")
            run_id = self.queue(env)
            wait_for(lambda: self.run_row(run_id).get("current_change"), timeout=60, what="the run to be inside its change")
            task_id = self.query("SELECT task_id FROM changes_app_run WHERE id = %s", [run_id])[0][0]
            victim = next(worker for worker in workers if worker.received(task_id))
            killed = time.monotonic()
            victim.kill()
            wait_for(lambda: self.run_row(run_id)["status"] != "RUNNING", timeout=600, interval=0.05, what="the run to be settled")
            settled = time.monotonic() - killed
            row = self.run_row(run_id)
            return {"settled_s": settled, "status": row["status"], "reason": row["status_reason"][:80]}
        finally:
            for worker in workers:
                worker.kill()
            reaper.kill()
            reaper.wait()

    def pause(self, index: int) -> dict:
        environment = f"bench-pause-{index}"
        marker = f"pause-{index}-marker"
        go = self.workdir / f"go-{index}"
        stages = self.pipeline([(marker, "ext-pg", 0.0), (f"pause-{index}-after", "app-db", 0.0)], gate=go)
        env = self.env(environment, stages=stages, FLAMINGOCK_LOCK_BACKEND="database")
        holder = self.manage(
            "flamingock", "run", "--json", env={**env, "FLAMINGOCK_PAUSE_AT": f"after_apply:{marker}"}, wait=False, log_name="holder"
        )
        taker = None
        try:
            # A holds the lock at the gate; B starts and asks for it; then A goes on and pauses in the
            # marker change. So B is up when A pauses, as a waiting worker or deploy would be.
            held = "SELECT 1 FROM audit_app_auditentry WHERE event = 'lock.acquired' AND pid = %s"
            wait_for(lambda: _alive(holder, self) and self.query(held, [holder.pid]), timeout=120, what="A to hold the lock")
            taker = self.manage("flamingock", "run", "--json", env=env, wait=False, log_name="taker")
            wait_for(lambda: self.query("SELECT 1 FROM changes_app_run WHERE pid = %s", [taker.pid]), timeout=120, what="B to ask for the lock")
            go.touch()
            wait_for(lambda: holder.poll() is not None or _stopped(holder.pid), timeout=120, what="A to pause itself")
            if holder.poll() is not None:
                raise RuntimeError(f"A exited before its pause:\n{self.output(holder)}")
            paused, paused_wall = time.monotonic(), time.time()
            taker.wait(timeout=300)
            finished = time.monotonic() - paused
            result = self.json_of(taker)
            if taker.returncode != 0:
                raise RuntimeError(f"B ended {taker.returncode}:\n{self.output(taker)}")
            acquired = self.query(
                "SELECT extract(epoch FROM created_at) FROM audit_app_auditentry WHERE event = 'lock.acquired' AND run_id = %s", [result["run_id"]]
            )[0][0]
            os.kill(holder.pid, signal.SIGCONT)
            holder.wait(timeout=120)
            woken = self.json_of(holder)
            return {"takeover_s": float(acquired) - paused_wall, "finished_s": finished, "status": result["status"], "holder": woken["status"]}
        finally:
            if holder.poll() is None:
                os.kill(holder.pid, signal.SIGCONT)
                holder.kill()
                holder.wait()
            if taker is not None and taker.poll() is None:
                taker.kill()
                taker.wait()

    def redis_restart(self, index: int, worker: Worker, env: dict[str, str]) -> dict:
        self.redis.kill()
        self.redis.start()
        restarted, restarted_wall = time.monotonic(), time.time()
        run_id = self.queue(env)
        wait_for(lambda: self.run_row(run_id).get("finished_at") is not None, timeout=600, interval=0.05, what="the next run to finish")
        done = time.monotonic() - restarted
        row = self.run_row(run_id)
        if row["status"] not in ("SUCCEEDED", "NO_CHANGES"):
            raise RuntimeError(f"the run after the restart ended {row['status']}: {row['status_reason']}")
        return {
            "next_run_s": done,
            "queued_s": row["created_at"].timestamp() - restarted_wall,
            "pickup_s": (row["started_at"] - row["created_at"]).total_seconds(),
            "status": row["status"],
        }


def _alive(process: subprocess.Popen, bench: Bench) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args[2:]} exited {process.returncode}:\n{bench.output(process)[-3000:]}")
    return True


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="one scenario (repeatable)")
    parser.add_argument("--lease", type=float, default=3.0, help="lock lease in seconds (default 3)")
    parser.add_argument("--heartbeat-timeout", type=float, help="the reaper's no-heartbeat limit (default 3 leases, as in production)")
    parser.add_argument("--reaper", type=float, default=3.0, help="seconds between reaper passes (default 3; production 60)")
    options = parser.parse_args()
    options.heartbeat_timeout = options.heartbeat_timeout or 3 * options.lease
    scenarios = options.only or list(SCENARIOS)
    results: dict[str, list[dict]] = {}
    with standalone_context(options.pg, prefix="flk-bench-recovery-") as context:
        bench = Bench(context, options)
        if "kill9" in scenarios:
            results["kill9"] = []
            for index in range(options.trials):
                results["kill9"].append(bench.kill9(index))
                log(f"kill9 {index + 1}/{options.trials}: {results['kill9'][-1]}")
        if "pause" in scenarios:
            results["pause"] = []
            for index in range(options.trials):
                results["pause"].append(bench.pause(index))
                log(f"pause {index + 1}/{options.trials}: {results['pause'][-1]}")
        if "redis" in scenarios:
            results["redis"] = []
            env = bench.env("bench-redis", stages=bench.pipeline([("redis-warm", "app-db", 0.0)]))
            worker = Worker("w-redis@bench", env=env, log_dir=context.workdir / "workers").start()
            try:
                wait_for(lambda: worker.ready, timeout=120, interval=0.1, what="the worker ready")
                first = bench.queue(env)
                wait_for(lambda: bench.run_row(first).get("finished_at") is not None, timeout=120, what="the warm-up run")
                for index in range(options.trials):
                    results["redis"].append(bench.redis_restart(index, worker, env))
                    log(f"redis {index + 1}/{options.trials}: {results['redis'][-1]}")
            finally:
                worker.kill()
        report(results, bench.settings, options)


def report(results: dict[str, list[dict]], settings: dict[str, float], options) -> None:
    measures = {
        "kill9": [("worker kill -9 → run settled (reaper or redelivery)", "settled_s")],
        "pause": [("paused holder → takeover (B holds the lock)", "takeover_s"), ("paused holder → B's run finished", "finished_s")],
        "redis": [
            ("Redis restart → next run finished", "next_run_s"),
            ("  of which: restart → run queued (the queueing process starting)", "queued_s"),
            ("  of which: queued → picked up by the worker (its reconnection)", "pickup_s"),
        ],
    }
    rows, data = [], {"settings": settings, "trials": results, "summary": {}}
    for scenario, trials in results.items():
        for label, key in measures[scenario]:
            stats = summary([trial[key] for trial in trials])
            data["summary"][key] = stats
            rows.append(f"| {label} | {stats['n']} | {stats['median']:.2f} s | {stats['p95']:.2f} s | {stats['max']:.2f} s |")
    outcomes = {scenario: sorted({trial.get("status", "") for trial in trials}) for scenario, trials in results.items()}
    shown = ", ".join(f"{key} {value:g} s" for key, value in settings.items())
    markdown = "\n".join(
        [
            "| recovery | trials | median | p95 | max |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Settings: {shown}. Outcomes: {json.dumps(outcomes)}.",
        ]
    )
    directory = REPO / "bench" / "results" / f"recovery-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recovery.md").write_text(markdown + "\n")
    (directory / "recovery.json").write_text(json.dumps(data, indent=2, default=str))
    print(markdown)
    log(f"written to {directory}")


if __name__ == "__main__":
    main()
