"""Issue 9: the pipeline lock's cycle against redis-py's ``Lock`` (the ``lock-cycles`` analysis).

Product: the Redis lease lock (``changes_app.locks.redis.RedisLeaseLock``): acquire, take the
fencing token from the audit database, release by compare-and-delete; and the same cycle with the
audit entries the engine writes around it, exactly as ``Executor.acquire``/``release`` write them
(``lock.acquired`` after acquiring, ``lock.released`` after releasing, through ``audit_record``).
Peers: redis-py's ``Lock`` acquire/release; and the same with as many one-row commits as the
product writes entries (``INSERT`` of one row into a logged scratch table, ``COMMIT``, through
Django's connection: psycopg, the same server, the same durability).

One child process on a migrated throwaway database (``audit_database(context, entries=1000)``)
measures the four cases in rounds of N cycles, product and peer alternating within each round and
swapping places from one round to the next. Per case: the mean per-cycle time of every round, and
the median and p95 of those over the rounds; the p50/p95/p99 of single cycles beside them; the
round trips of one cycle (Redis commands, PostgreSQL statements and commits), counted.

    python bench/run.py --only lock-cycles
    python bench/lock_cycles.py                      # the same, alone (see that file)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import REPO, Analysis, BenchmarkError, Context, Suite, log, percentile
from bench.machine import load_average

NAME = "lock-cycles"
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
ENVIRONMENT = "bench"
SCRATCH_TABLE = "bench_lock_commit"
#: Audit entries (and so peer commits) per cycle: lock.acquired and lock.released.
ENTRIES_PER_CYCLE = 2
GOALS = {"plain": 2.0, "audited": 1.5}
CASES = {
    # key: (label, is_product, pair)
    "peer": ("redis-py Lock acquire/release", False, "plain"),
    "product": ("product lock: acquire, token, release", True, "plain"),
    "peer_commits": (f"redis-py Lock + {ENTRIES_PER_CYCLE} one-row commits", False, "audited"),
    "product_audited": (f"product lock + its {ENTRIES_PER_CYCLE} audit entries", True, "audited"),
    # Reported beside the goal, not the goal's peer: each commit as psycopg's default connection (and
    # Django's atomic) sends it, BEGIN, INSERT, COMMIT: three round trips.
    "peer_tx_commits": (f"redis-py Lock + {ENTRIES_PER_CYCLE} one-row transactions (BEGIN, INSERT, COMMIT)", False, "audited"),
}


# -- the child: measures in one process (Django set up on the throwaway database) ----------------


def measure(*, cycles: int, rounds: int, redis_url: str = REDIS_URL, warmup: int | None = None) -> dict[str, Any]:
    """Time the four cases; Django must be set up on a migrated database. Returns the raw data."""
    import redis
    from django.db import connection, transaction

    from audit_app.models import AuditEntry
    from audit_app.services import Actor, audit_record
    from changes_app.locks.redis import RedisLeaseLock

    tag = uuid.uuid4().hex[:8]
    lock = RedisLeaseLock(f"bench:lock-cycles:{tag}", lease_seconds=60, url=redis_url)
    client = redis.Redis.from_url(redis_url)
    peer_key = f"bench:lock-cycles:{tag}:peer"
    actor = Actor(name="svc:bench", via="bench")
    with connection.cursor() as cursor:
        # Logged, like the audit trail: a temporary table would commit without waiting for the WAL.
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {SCRATCH_TABLE} (id bigserial PRIMARY KEY, note text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        )
    tokens: list[int] = []

    def product() -> None:
        lease = lock.try_acquire(run_id=uuid.uuid4(), actor=actor)
        if lease is None or not lease.release():
            raise BenchmarkError("the product lock was not free or not released")
        tokens.append(lease.token)

    def product_audited() -> None:
        # Executor.acquire and Executor.release, without the run row and the heartbeat thread.
        run_id = uuid.uuid4()
        lease = lock.try_acquire(run_id=run_id, actor=actor)
        if lease is None:
            raise BenchmarkError("the product lock was not free")
        audit_record(event="lock.acquired", actor=actor, environment=ENVIRONMENT, run_id=run_id, details={"lock": lock.name, "token": lease.token})
        if not lease.release() or lease.lost:
            raise BenchmarkError("the product lock was not released")
        audit_record(event="lock.released", actor=actor, environment=ENVIRONMENT, run_id=run_id, details={"lock": lock.name, "token": lease.token})
        tokens.append(lease.token)

    def commit(note: str) -> None:
        # One statement in autocommit: its own transaction, one round trip (what Model.objects.create
        # sends), the cheapest durable one-row commit, as the product's entry of its own is.
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {SCRATCH_TABLE} (note) VALUES (%s)", [note])

    def commit_in_transaction(note: str) -> None:
        with transaction.atomic():
            commit(note)

    def peer_cycle(commit_with=None) -> None:
        handle = client.lock(peer_key, timeout=60, blocking=False)
        if not handle.acquire(blocking=False):
            raise BenchmarkError("the peer lock was not free")
        if commit_with:
            commit_with("acquired")
        handle.release()
        if commit_with:
            commit_with("released")

    def peer() -> None:
        peer_cycle()

    def peer_commits() -> None:
        peer_cycle(commit)

    def peer_tx_commits() -> None:
        peer_cycle(commit_in_transaction)

    bodies = {"peer": peer, "product": product, "peer_commits": peer_commits, "product_audited": product_audited, "peer_tx_commits": peer_tx_commits}
    done = dict.fromkeys(bodies, 0)

    def timed(key: str, count: int) -> list[float]:
        body, clock, samples = bodies[key], time.perf_counter, []
        for _ in range(count):
            started = clock()
            body()
            samples.append(clock() - started)
        done[key] += count
        return samples

    try:
        for key in bodies:  # warm-up: connections, scripts, the lock's sequence, prepared statements
            timed(key, warmup if warmup is not None else min(cycles, 200))
        round_trips = {key: _round_trips(bodies[key], lock.client, client, connection) for key in bodies}
        for key in bodies:
            done[key] += 1
        samples: dict[str, list[list[float]]] = {key: [] for key in bodies}
        load_before = load_average()
        for index in range(rounds):
            for pair in (("peer", "product"), ("peer_commits", "product_audited", "peer_tx_commits")):
                for key in pair if index % 2 == 0 else reversed(pair):
                    samples[key].append(timed(key, cycles))
            shown = ", ".join(f"{key} {statistics.fmean(samples[key][-1]) * 1000:.3f}" for key in bodies)
            log(f"{NAME} round {index + 1}/{rounds} (ms per cycle): {shown}")
        load_after = load_average()
        # Untimed checks: every cycle did its work.
        if tokens != sorted(set(tokens)):
            raise BenchmarkError("fencing tokens did not strictly increase")
        audited = done["product_audited"]
        for event in ("lock.acquired", "lock.released"):
            written = AuditEntry.objects.filter(event=event, environment=ENVIRONMENT).count()
            if written != audited:
                raise BenchmarkError(f"{written} {event} entries for {audited} audited cycles")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {SCRATCH_TABLE}")
            if cursor.fetchone()[0] != ENTRIES_PER_CYCLE * (done["peer_commits"] + done["peer_tx_commits"]):
                raise BenchmarkError("the peer's commits are not all there")
    finally:
        client.delete(lock.key, peer_key)
        client.close()
        lock.client.close()
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        synchronous_commit = cursor.fetchone()[0]
    return {
        "cycles": cycles,
        "rounds": rounds,
        "samples_s": samples,
        "round_trips": round_trips,
        "tokens": {"first": tokens[0], "last": tokens[-1], "count": len(tokens)},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "synchronous_commit": synchronous_commit,
    }


def _round_trips(body, *clients_and_connection) -> dict[str, int]:
    """Redis commands and PostgreSQL round trips of one cycle, counted on the wire: libpq's trace
    of the connection shows every exchange, those through Django's cursors and the lock's own."""
    from psycopg import pq

    *clients, connection = clients_and_connection
    counts = {"redis": 0}
    originals = [(client, client.execute_command) for client in clients]

    def counting(execute):
        def wrapper(*args, **kwargs):
            counts["redis"] += 1
            return execute(*args, **kwargs)

        return wrapper

    for client, execute in originals:
        client.execute_command = counting(execute)
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            body()
        finally:
            pgconn.untrace()
            for client, _ in originals:
                del client.execute_command
        trace.seek(0)
        # A round trip ends with a simple Query or an extended-protocol Sync sent by the client.
        sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F\t")]
    counts["pg_round_trips"] = sum(1 for fields in sent if fields[2] in ("Query", "Sync"))
    counts["pg_commits"] = sum(1 for fields in sent if fields[2] == "Query" and fields[3].strip() == '"COMMIT"')
    return counts


# -- the parent: a throwaway database, the child, the report --------------------------------------


def summarise(samples: list[list[float]]) -> dict[str, Any]:
    """Per-cycle milliseconds: the mean of each round, their median and p95; single cycles pooled."""
    per_round = [statistics.fmean(round_) * 1000 for round_ in samples]
    pooled = [value * 1000 for round_ in samples for value in round_]
    return {
        "per_round_ms": [round(value, 4) for value in per_round],
        "median_ms": statistics.median(per_round),
        "p95_ms": percentile(per_round, 0.95),
        "cycle_p50_ms": percentile(pooled, 0.50),
        "cycle_p95_ms": percentile(pooled, 0.95),
        "cycle_p99_ms": percentile(pooled, 0.99),
    }


def analyse(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cases = {key: {"label": CASES[key][0], **summarise(raw["samples_s"][key]), "round_trips": raw["round_trips"][key]} for key in CASES}
    ratios = {
        "plain": cases["product"]["median_ms"] / cases["peer"]["median_ms"],
        "audited": cases["product_audited"]["median_ms"] / cases["peer_commits"]["median_ms"],
        "audited_vs_transactions": cases["product_audited"]["median_ms"] / cases["peer_tx_commits"]["median_ms"],
    }
    ratios_p95 = {
        "plain": cases["product"]["p95_ms"] / cases["peer"]["p95_ms"],
        "audited": cases["product_audited"]["p95_ms"] / cases["peer_commits"]["p95_ms"],
    }

    def shown(case: dict[str, Any]) -> str:
        return f"{case['median_ms']:.3f} ms (p95 {case['p95_ms']:.3f})"

    goals = [
        {
            "what": "lock cycle (acquire, token, release), without audit",
            "product": shown(cases["product"]),
            "peer": f"{cases['peer']['label']}: {shown(cases['peer'])}",
            "ratio": round(ratios["plain"], 4),
            "goal": f"within {GOALS['plain']:g}x",
            "met": ratios["plain"] <= GOALS["plain"],
        },
        {
            "what": "lock cycle with its audit entries",
            "product": shown(cases["product_audited"]),
            "peer": f"{cases['peer_commits']['label']}: {shown(cases['peer_commits'])}",
            "ratio": round(ratios["audited"], 4),
            "goal": f"within {GOALS['audited']:g}x",
            "met": ratios["audited"] <= GOALS["audited"],
        },
    ]
    data = {
        "cycles": raw["cycles"],
        "rounds": raw["rounds"],
        "cases": cases,
        "ratios_median": ratios,
        "ratios_p95": ratios_p95,
        "tokens": raw["tokens"],
        "load_average_before": raw["load_average_before"],
        "load_average_after": raw["load_average_after"],
        "synchronous_commit": raw["synchronous_commit"],
        "goals": goals,
    }
    lines = [
        f"{raw['rounds']} rounds of {raw['cycles']:,} cycles per case, product and peer alternating; one process, "
        f"PostgreSQL synchronous_commit={raw['synchronous_commit']}; load average {raw['load_average_before']} before, "
        f"{raw['load_average_after']} after.",
        "",
        "| case | per cycle, median of rounds | p95 of rounds | single cycle p50 / p95 / p99 | Redis commands | PostgreSQL round trips | of them an explicit COMMIT |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for case in cases.values():
        trips = case["round_trips"]
        lines.append(
            f"| {case['label']} | {case['median_ms']:.3f} ms | {case['p95_ms']:.3f} ms | "
            f"{case['cycle_p50_ms']:.3f} / {case['cycle_p95_ms']:.3f} / {case['cycle_p99_ms']:.3f} ms | "
            f"{trips['redis']} | {trips['pg_round_trips']} | {trips['pg_commits']} |"
        )
    lines += [
        "",
        "Round trips are counted on the wire (libpq trace). The product's token is one statement in autocommit (`nextval` recorded in the fence row); "
        "an audit entry of its own, like a peer's one-row commit, is one statement in autocommit: its own transaction, one round trip. "
        f"Beside the goal: against one-row transactions (BEGIN, INSERT, COMMIT, as psycopg's default connection commits) the "
        f"audited cycle is {ratios['audited_vs_transactions']:.2f}x.",
        "",
        "| goal | product | peer | ratio (median) | ratio (p95) | met |",
        "|---|---|---|---:|---:|---|",
    ]
    for goal, key in zip(goals, ("plain", "audited"), strict=True):
        lines.append(
            f"| {goal['what']} ({goal['goal']}) | {goal['product']} | {goal['peer']} | {ratios[key]:.2f} | {ratios_p95[key]:.2f} | "
            f"{'yes' if goal['met'] else 'NO'} |"
        )
    return "\n".join(lines), data


def run_analysis(context: Context, output_dir: Path, *, cycles: int | None = None, rounds: int | None = None) -> tuple[str, dict[str, Any]]:
    from bench.audit_data import audit_database, product_env

    cycles = cycles or (200 if context.quick else 2000)
    rounds = rounds or 5
    database = audit_database(context, entries=1000)
    output_dir.mkdir(parents=True, exist_ok=True)
    raw_path = output_dir / f"{NAME}-raw.json"
    env = {**product_env(context, database), "REDIS_URL": REDIS_URL}
    command = [context.python, str(REPO / "bench" / "lock_cycles.py"), "--child", str(raw_path), "--cycles", str(cycles), "--rounds", str(rounds)]
    log(f"{NAME}: {rounds} rounds of {cycles} cycles per case on {database}")
    completed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise BenchmarkError(f"{NAME}: exit code {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    raw = json.loads(raw_path.read_text())
    raw_path.unlink()
    context.pg.database_drop(database)
    return analyse(raw)


def suite(context: Context) -> Suite:
    analysis = Analysis(
        NAME, "Lock cycles: the Redis lease lock against redis-py's Lock, with and without audit entries", lambda out: run_analysis(context, out)
    )
    return Suite(name="lock_cycles", benchmarks=[], analyses=[analysis])
