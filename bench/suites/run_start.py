"""Issue 9: run start latency, from queueing a run to its first change, on a real Celery worker.

**What is measured.** *Run start latency* is the time from just before the caller queues a run
(``services.run_queue``: the QUEUED run row, its ``run.queued`` entry, the task published once the row
is committed) to the moment the first change's ``apply`` begins executing in the worker. The change
of a generated pipeline records ``time.time()`` on its first line; caller and worker are on one
host, so one clock serves both. Everything a worker does before a change runs is inside: broker
delivery, the claim, the actor, the catalogue sync, discovery, the lock and its fencing token, the
``run.started`` and ``lock.acquired`` entries, the plan read again under the lock, progress, the
permission check of the target system.

**Peer.** A no-op Celery task, ``apply_async().get()`` (Redis broker and Redis result backend), on
the same worker process and the same queue: the floor of "ask a worker to do something".

**How.** One real worker (``celery -A flamingock_site worker``, the documented command: prefork
pool, one child per core) with ``REDIS_URL`` (the broker and the pipeline lock, a key prefix and a
queue of this run's own) and ``DATABASE_URL`` to a migrated throwaway PostgreSQL database. A driver
child process (``python -m bench.suites.run_start --drive``) with the same environment queues runs
and no-op tasks alternately (product, peer, peer, product...), waiting for each to finish. Each
product sample needs a pending first change: between samples, untimed, the driver undoes and
releases it (``change_undo``, ``change_reapply``, executed in the driver process), so every timed
run applies exactly that change. No eager mode anywhere.

A second, instrumented pass (``--trace``) records what the worker does between the task's start
and the first ``apply``: every SQL statement (and whether it committed on its own), every Redis
command, every module imported. The instrumentation inflates times; the counts are exact.

Stand-alone: ``python -m bench.suites.run_start [--quick] [--samples N]`` prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO, Analysis, BenchmarkError, Context, Suite, log, percentile, standalone_context

GOAL_RATIO = 2.0
PACKAGE = "flk_bench_run_start"
TASKS_MODULE = "flk_bench_run_start_tasks"
CHANGE_ID = "bench-run-start-first"
TABLE = "bench_first_change"
TABLE_DDL = f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, run_id varchar(64) NOT NULL, pid integer NOT NULL, at double precision NOT NULL)"
ENVIRONMENT = "bench-run-start"
REDIS_SERVER = os.environ.get("FLAMINGOCK_BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("FLAMINGOCK_BENCH_REDIS_DB", "6"))

CHANGE = f'''\
import os
import time

from changes_app.definitions import Change


class FirstChange(Change):
    """The run start benchmark's change: records when its apply begins."""

    id = {CHANGE_ID!r}
    author = "bench"
    target = "app-db"

    def apply(self, cursor, context):
        at = time.time()  # the end of the measured interval: the first change's apply begins
        cursor.execute("INSERT INTO {TABLE} (run_id, pid, at) VALUES (%s, %s, %s)", [str(context.run_id), os.getpid(), at])

    def rollback(self, cursor, context):
        # The row is the measurement: an undo keeps it.
        pass
'''

#: Imported by the worker (``-I``): the peer's no-op task, and timings of each run task pushed to
#: Redis after the task (never inside the measured interval). With FLK_BENCH_TRACE, what the task
#: does: SQL statements, Redis commands, imports.
TASKS = """\
import json
import os
import sys
import time

import redis
from celery import signals

from flamingock_site.celery import app

app.conf.result_backend = os.environ["FLK_BENCH_RESULT_BACKEND"]
KEY = os.environ["FLK_BENCH_TIMINGS_KEY"]
TRACE = os.environ.get("FLK_BENCH_TRACE") == "1"
_client = redis.Redis.from_url(os.environ["REDIS_URL"])
_state = {}


@app.task(name="flk_bench.noop", ignore_result=False)
def noop():
    return None


def _event(kind, what, started):
    if _state.get("events") is not None:
        _state["events"].append((started, kind, what, time.time() - started))


def _sql(execute, sql, params, many, context):
    started = time.time()
    try:
        return execute(sql, params, many, context)
    finally:
        connection = context["connection"]
        _event("sql" if connection.in_atomic_block else "sql+commit", " ".join(str(sql).split())[:160], started)


if TRACE:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from redis.client import Redis

    _commit, _connect, _command = BaseDatabaseWrapper.commit, BaseDatabaseWrapper.connect, Redis.execute_command

    def commit(self):
        started = time.time()
        try:
            return _commit(self)
        finally:
            _event("commit", self.alias, started)

    def connect(self):
        started = time.time()
        try:
            return _connect(self)
        finally:
            _event("db-connect", self.alias, started)

    def command(self, *args, **options):
        started = time.time()
        try:
            return _command(self, *args, **options)
        finally:
            _event("redis", " ".join(str(arg) for arg in args[:2])[:80], started)

    BaseDatabaseWrapper.commit, BaseDatabaseWrapper.connect, Redis.execute_command = commit, connect, command


@signals.task_prerun.connect
def _prerun(task_id=None, task=None, **kwargs):
    if task.name != "flamingock.run_execute":
        return
    _state.update(task_id=task_id, prerun=time.time(), modules=set(sys.modules) if TRACE else None, events=[] if TRACE else None)
    if TRACE:
        from django.db import connections

        connection = connections["default"]
        if _sql not in connection.execute_wrappers:
            connection.execute_wrappers.append(_sql)


@signals.task_postrun.connect
def _postrun(task_id=None, task=None, **kwargs):
    if task.name != "flamingock.run_execute" or _state.get("task_id") != task_id:
        return
    record = {"task_id": task_id, "pid": os.getpid(), "prerun": _state["prerun"], "postrun": time.time()}
    if TRACE:
        record["events"] = _state.pop("events")
        record["imported"] = sorted(set(sys.modules) - _state["modules"])
    _state["events"] = None
    _client.rpush(KEY, json.dumps(record))
"""


# -- the suite (parent process) --------------------------------------------------------------------


class Setup:
    """The generated code, the database, the Redis key space and the worker of one measurement."""

    def __init__(self, *, workdir: Path, pg, python: str, base_env: dict[str, str], tag: str):
        self.workdir = workdir
        self.pg = pg
        self.python = python
        self.tag = tag
        self.keyprefix = f"flk-bench-runstart-{tag}:"
        self.queue = f"flk-bench-runstart-{tag}"
        self.redis_url = f"{REDIS_SERVER}/{REDIS_DB}"
        self.database = ""
        self.worker: subprocess.Popen | None = None
        self.worker_log = workdir / f"worker-{tag}.log"
        self.base_env = base_env

    def code_write(self) -> None:
        package = self.workdir / PACKAGE
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")
        (package / "0001_first_change.py").write_text(CHANGE)
        (self.workdir / f"{TASKS_MODULE}.py").write_text(TASKS)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.base_env,
            "DJANGO_SETTINGS_MODULE": "flamingock_site.settings",
            "DATABASE_URL": self.pg.database_url(self.database),
            "REDIS_URL": self.redis_url,
            "FLAMINGOCK_BROKER_KEYPREFIX": self.keyprefix,
            "FLAMINGOCK_QUEUE": self.queue,
            "FLAMINGOCK_ENVIRONMENT": ENVIRONMENT,
            "FLAMINGOCK_STAGES": f"bench={PACKAGE}",
            "FLAMINGOCK_DISCOVER_APPS": "0",
            "FLAMINGOCK_VAR_DIR": str(self.workdir / "var"),
            "FLK_BENCH_RESULT_BACKEND": self.redis_url,
            "FLK_BENCH_TIMINGS_KEY": f"{self.keyprefix}timings",
            "PYTHONPATH": os.pathsep.join([str(self.workdir), str(REPO)]),
            **extra,
        }

    def database_create(self) -> None:
        self.database = self.pg.database_create(f"run_start_{self.tag}")
        completed = subprocess.run(
            [self.python, str(REPO / "manage.py"), "migrate", "--no-input", "-v", "0"], env=self.env(), cwd=REPO, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise BenchmarkError(f"migrate failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        self.pg.execute(self.database, TABLE_DDL)

    def worker_start(self, *, trace: bool = False, pool: str = "") -> None:
        command = [self.python, "-m", "celery", "-A", "flamingock_site", "worker", "-l", "info", "-n", f"runstart-{self.tag}@%h", "-I", TASKS_MODULE]
        if pool:
            command.append(f"--pool={pool}")
        env = self.env(FLK_BENCH_TRACE="1" if trace else "0")
        with open(self.worker_log, "a", encoding="utf-8") as output:
            output.write(f"\n=== {' '.join(command)}\n")
            output.flush()
            self.worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while " ready." not in self.worker_log.read_text(errors="replace").rsplit("=== ", 1)[-1]:
            if self.worker.poll() is not None or time.monotonic() > deadline:
                self.worker_stop()
                raise BenchmarkError(f"the worker did not start:\n{self.worker_log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)

    def worker_stop(self) -> None:
        if self.worker is None:
            return
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = None

    def drive(self, *, samples: int, warmup: int, trace: bool = False) -> dict[str, Any]:
        output = self.workdir / f"drive-{self.tag}-{'trace' if trace else 'timed'}.json"
        command = [self.python, "-m", "bench.suites.run_start", "--drive", "--samples", str(samples), "--warmup", str(warmup), "--out", str(output)]
        if trace:
            command.append("--no-peer")
        completed = subprocess.run(command, env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=1800)
        if completed.returncode != 0:
            raise BenchmarkError(
                f"run-start driver failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-4000:]}\n"
                f"--- worker log (tail)\n{self.worker_log.read_text(errors='replace')[-3000:]}"
            )
        return json.loads(output.read_text())

    def cleanup(self) -> None:
        self.worker_stop()
        try:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            keys = list(client.scan_iter(match=f"{self.keyprefix}*", count=1000))
            keys += [f"flamingock:lock:pipeline:{ENVIRONMENT}", f"flamingock:lock:pipeline:{ENVIRONMENT}:holder"]
            client.delete(*keys)
            client.close()
        except Exception:  # noqa: BLE001 - cleanup is best effort
            pass
        if self.database:
            self.pg.database_drop(self.database)
            self.database = ""


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values) * 1000,
        "p95": percentile(values, 0.95) * 1000,
        "min": min(values) * 1000,
        "max": max(values) * 1000,
    }


def _fmt(summary: dict[str, float]) -> str:
    return f"{summary['median']:.2f} ms (p95 {summary['p95']:.2f})" if summary.get("n") else "-"


def measure(context: Context, *, samples: int, warmup: int, pool: str = "", trace: bool = True) -> dict[str, Any]:
    """Start the worker, drive the alternating samples (and the instrumented pass), clean up."""
    tag = f"{os.getpid()}"
    setup = Setup(workdir=context.workdir / "run_start", pg=context.pg, python=context.python, base_env=context.base_env(), tag=tag)
    setup.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        setup.code_write()
        setup.database_create()
        setup.worker_start(pool=pool)
        timed = setup.drive(samples=samples, warmup=warmup)
        setup.worker_stop()
        traced = None
        if trace:
            setup.worker_start(trace=True, pool=pool)
            traced = setup.drive(samples=3, warmup=1, trace=True)
            setup.worker_stop()
    finally:
        setup.cleanup()
    timed["load_average"] = {"before": load_before, "after": os.getloadavg()}
    timed["trace"] = traced
    timed["pool"] = pool or "prefork (default)"
    return timed


def analyse(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    product = _ms([sample["latency"] for sample in data["product"]])
    peer = _ms(data["peer"])
    ratio = product["median"] / peer["median"] if peer.get("n") and product.get("n") else None
    ratio_p95 = product["p95"] / peer["p95"] if peer.get("n") and product.get("n") else None
    caller = _ms([sample["published"] - sample["t0"] for sample in data["product"]])
    delivery = _ms([sample["prerun"] - sample["published"] for sample in data["product"]])
    worker = _ms([sample["applied"] - sample["prerun"] for sample in data["product"] if sample.get("prerun")])
    claim = _ms([sample["claimed"] - sample["prerun"] for sample in data["product"] if sample.get("prerun")])
    after_claim = _ms([sample["applied"] - sample["claimed"] for sample in data["product"]])
    met = ratio is not None and ratio <= GOAL_RATIO
    goal = {
        "what": "run start latency: queue to first change, Redis broker",
        "product": _fmt(product),
        "peer": f"no-op task apply_async().get(): {_fmt(peer)}",
        "ratio": round(ratio, 2) if ratio is not None else None,
        "goal": f"within {GOAL_RATIO:g}x of the no-op round trip",
        "met": met,
    }
    load = data["load_average"]
    lines = [
        f"Worker: `celery -A flamingock_site worker`, pool {data['pool']}; Redis broker; PostgreSQL audit store. "
        f"{product.get('n', 0)} product and {peer.get('n', 0)} peer samples, alternating, after {data['warmup']} untimed of each. "
        f"Load average {load['before'][0]:.2f} at start, {load['after'][0]:.2f} at end (2 cores).",
        "",
        "| measure | median ms | p95 ms | min ms | max ms |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("**run start: queue to first change's apply** (product)", product),
        ("**no-op task `apply_async().get()`** (peer)", peer),
        ("caller: `run_queue` until it publishes (run row, `run.queued` entry, commit)", caller),
        ("broker: publish to the task's start in the worker", delivery),
        ("worker: task start to the first change's apply", worker),
        ("of which task start to claimed (`started_at`)", claim),
        ("of which claimed to the first change's apply", after_claim),
    ]
    for label, summary in rows:
        if summary.get("n"):
            lines.append(f"| {label} | {summary['median']:.2f} | {summary['p95']:.2f} | {summary['min']:.2f} | {summary['max']:.2f} |")
    lines += [
        "",
        f"Ratio product / peer: median **{ratio:.2f}x**, p95 {ratio_p95:.2f}x (goal: within {GOAL_RATIO:g}x): {'met' if met else 'NOT met'}.",
    ]
    if data.get("cold") is not None:
        lines.append(
            f"First run after the worker started (not in the samples): {data['cold'] * 1000:.1f} ms, of which the worker's "
            f"task start to first apply {data['cold_worker'] * 1000:.1f} ms (the rest is the driver's own first connections)."
        )
    trace = data.get("trace")
    if trace and trace.get("product"):
        lines += ["", *trace_markdown(trace)]
    summary = {
        "goals": [goal],
        "product_ms": product,
        "peer_ms": peer,
        "ratio_median": ratio,
        "ratio_p95": ratio_p95,
        "breakdown_ms": {"caller": caller, "delivery": delivery, "worker": worker, "claim": claim, "after_claim": after_claim},
        "cold_ms": data["cold"] * 1000 if data.get("cold") is not None else None,
        "cold_worker_ms": data["cold_worker"] * 1000 if data.get("cold_worker") is not None else None,
        "load_average": load,
        "pool": data["pool"],
        "samples": data,
    }
    return "\n".join(lines), summary


def _trace_counts(sample: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for started, kind, _, _ in sample.get("events", []):
        if started <= sample["applied"]:
            counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())) + f"; {len(sample.get('imported', []))} modules imported"


def trace_markdown(trace: dict[str, Any]) -> list[str]:
    """The last instrumented run: what the worker did from task start to the first apply."""
    sample = trace["product"][-1]
    lines = [
        f"Instrumented run (times inflated by the instrumentation; counts exact), task start to the first apply: {_trace_counts(sample)}.",
    ]
    cold = trace.get("cold_sample")
    if cold:
        lines.append(
            f"The first run of that fresh worker: {(cold['applied'] - cold['prerun']) * 1000:.1f} ms from task start to the first apply; "
            f"{_trace_counts(cold)} ({', '.join(cold.get('imported', [])[:12])}{'...' if len(cold.get('imported', [])) > 12 else ''})."
        )
    lines += ["", "| +ms | kind | what | ms |", "|---|---|---|---|"]
    for started, kind, what, duration in sample.get("events", []):
        if started <= sample["applied"]:
            lines.append(f"| {(started - sample['prerun']) * 1000:.2f} | {kind} | `{what.replace('|', '/')}` | {duration * 1000:.2f} |")
    lines.append(f"| {(sample['applied'] - sample['prerun']) * 1000:.2f} | apply | first change's apply begins | |")
    return lines


def suite(context: Context) -> Suite:
    samples = 5 if context.quick else max(30, context.repeat)
    warmup = 2 if context.quick else 5

    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        data = measure(context, samples=samples, warmup=warmup)
        markdown, summary = analyse(data)
        (output_dir / "run_start.json").write_text(json.dumps(summary, indent=2, default=str))
        return markdown, summary

    return Suite(
        name="run_start",
        benchmarks=[],
        analyses=[Analysis("run-start", "Run start latency: queue to first change on a real worker (Redis broker), against a no-op task", run)],
    )


# -- the driver (child process, product environment) -----------------------------------------------


def _wait(predicate, *, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def drive(options: argparse.Namespace) -> None:
    import django

    django.setup()
    import redis
    from django.db import connection

    from changes_app import services
    from changes_app.governance.identity import cli_actor
    from changes_app.models import Run
    from changes_app.tasks import run_execute_task

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    timings_key = os.environ["FLK_BENCH_TIMINGS_KEY"]
    actor = cli_actor()

    def applied_at(run_id) -> tuple[float, int] | None:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT at, pid FROM {TABLE} WHERE run_id = %s", [str(run_id)])
            return cursor.fetchone()

    def finished(run_id) -> Run | None:
        run = Run.objects.get(pk=run_id)
        return run if run.finished else None

    def task_timing(task_id: str) -> dict | None:
        for raw in client.lrange(timings_key, 0, -1):
            record = json.loads(raw)
            if record["task_id"] == task_id:
                return record
        return None

    def release() -> None:
        """Untimed: undo and release the change so that the next run applies it."""
        for service in (services.change_undo, services.change_reapply):
            run = service(change_id=CHANGE_ID, actor=actor, reason="run start benchmark: make the first change pending again", source=Run.Source.CLI)
            if run.status != Run.Status.SUCCEEDED:
                raise SystemExit(f"{service.__name__}: {run.status} {run.status_reason}")

    # The moment run_queue publishes (after its commit), for the breakdown: one clock read, no I/O.
    publishes: list[float] = []
    publish = run_execute_task.apply_async

    def apply_async(*args, **kwargs):
        publishes.append(time.time())
        return publish(*args, **kwargs)

    run_execute_task.apply_async = apply_async

    def product() -> dict[str, Any]:
        t0 = time.time()
        run = services.run_queue(actor=actor, source=Run.Source.CLI, reason="run start benchmark")
        (published,) = publishes
        publishes.clear()
        at, pid = _wait(lambda: applied_at(run.id), timeout=60, what=f"the first change of run {run.id}")
        done = _wait(lambda: finished(run.id), timeout=60, what=f"run {run.id} to finish")
        if done.status != Run.Status.SUCCEEDED:
            raise SystemExit(f"run {run.id} {done.status}: {done.status_reason} {done.results}")
        timing = _wait(lambda: task_timing(run.task_id), timeout=10, what=f"the worker's timings of {run.task_id}")
        release()
        return {
            "run_id": str(run.id),
            "t0": t0,
            "published": published,
            "claimed": done.started_at.timestamp(),
            "applied": at,
            "latency": at - t0,
            "worker_pid": pid,
            "prerun": timing["prerun"],
            **({"events": timing["events"], "imported": timing["imported"]} if "events" in timing else {}),
        }

    from flk_bench_run_start_tasks import noop  # the worker's own module: the same task object

    def peer() -> float:
        t0 = time.perf_counter()
        result = noop.apply_async()
        result.get(timeout=30)
        elapsed = time.perf_counter() - t0
        result.forget()
        return elapsed

    data: dict[str, Any] = {"product": [], "peer": [], "warmup": options.warmup, "cold": None, "cold_worker": None}
    # The first run of a fresh worker is reported apart; the change is applied then released.
    first = product()
    data["cold"] = first["latency"]
    data["cold_worker"] = first["applied"] - first["prerun"]
    if "events" in first:
        data["cold_sample"] = first
    for _ in range(options.warmup):
        product()
        if not options.no_peer:
            peer()
    for index in range(options.samples):
        order = ("product", "peer") if index % 2 == 0 else ("peer", "product")
        for side in order:
            if side == "product":
                data["product"].append(product())
            elif not options.no_peer:
                data["peer"].append(peer())
    Path(options.out).write_text(json.dumps(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drive", action="store_true", help="(internal) the driver child process")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--quick", action="store_true", help="5 samples, 2 warm-ups")
    parser.add_argument("--pool", default="", help="the worker's pool (default: Celery's default, prefork)")
    parser.add_argument("--no-trace", dest="trace", action="store_false", help="skip the instrumented pass")
    parser.add_argument("--pg", default=os.environ.get("FLAMINGOCK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    options = parser.parse_args(argv)
    if options.drive:
        drive(options)
        return 0
    samples, warmup = (5, 2) if options.quick else (options.samples, options.warmup)
    fields = {"sizes": [1], "repeat": samples, "repeat_large": samples, "warmup": warmup, "quick": options.quick}
    with standalone_context(options.pg, prefix="flk_bench_run_start_", **fields) as context:
        log(f"run-start: {samples} samples, {warmup} warm-ups")
        data = measure(context, samples=samples, warmup=warmup, pool=options.pool, trace=options.trace)
        markdown, _ = analyse(data)
        print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
