"""Where an audit entry's time goes on the server: the writer's statement taken apart.

    python bench/entry_cost.py              # a throwaway migrated database with 1,000 chained entries, 5 rounds of 2,000 statements
    python bench/entry_cost.py --quick      # 5 rounds of 300

An entry of its own (``lock.acquired``, as the lock benchmark writes it) is captured as the writer
sends it, then sent again as five statements that add one part of it at a time, each prepared once
and run in autocommit (its own transaction and durable commit, one round trip), alternating in
rounds:

1. a one-row ``INSERT`` into a three-column table: the lock benchmark's peer;
2. the entry's row into the trail (its indexes and constraints), with a constant hash and a sequence
   number from a scratch sequence;
3. the same with the SHA-256 computed by the server over the entry's hash input;
4. the same under the chain head's row lock (``FOR UPDATE``);
5. the writer's whole statement (fence-free: a lock event), which also advances the head and
   returns what the writer checks.

A ``SELECT 1`` round trip is measured beside them: the part of every latency that is the client and
the network. The database is dropped at the end; the rows of variants 2 to 4 break its chain on
purpose (they are not linked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, standalone_context  # noqa: E402

VARIANTS = {
    "select1": "`SELECT 1` (client and network)",
    "peer": "one-row `INSERT` into a 3-column table",
    "row": "the entry's row into the trail, constant hash",
    "hash": "+ SHA-256 computed by the server",
    "head_lock": "+ the chain head's row lock",
    "writer": "the writer's whole statement",
}
#: Where the scratch sequence starts: far above any real entry of the throwaway trail.
SCRATCH_SEQ_START = 10**12


def statements() -> dict[str, str]:
    """The variants' SQL, built from the writer's statement as it was sent for one entry."""
    from django.db import connection

    from audit_app.services import Actor, audit_record

    sent: list[tuple[str, list]] = []

    def capture(execute, sql, params, many, context):
        sent.append((sql, list(params or [])))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        audit_record(
            event="lock.acquired",
            actor=Actor(name="bench", via="cli"),
            environment="bench",
            run_id=uuid.uuid4(),
            details={"lock": "pipeline", "token": 5},
        )
    (writer_sql, params), *_ = [(sql, params) for sql, params in sent if sql.startswith("WITH ")]
    writer = connection.ops.compose_sql(writer_sql, params)
    # The parts of the writer's statement, by their CTE names (audit_app/writer_postgresql.py, _statement).
    hash_expr = writer[writer.index("encode(", writer.index("x AS (")) : writer.index(" AS hash FROM v")]
    insert = writer[writer.index("e AS (INSERT INTO ") + len("e AS (") : writer.index(" RETURNING id, seq")]
    written = "SELECT x.seq, 1, x.prev, x.hash, x.ts,"
    if written not in insert or " FROM x" not in insert:
        raise SystemExit("the writer's statement changed shape: update bench/entry_cost.py")
    scratch = "WITH n AS (SELECT nextval('flk_bench_scratch_seq') AS seq, clock_timestamp() AS ts{lock}) "
    n_hash = hash_expr.replace("v.seq", "n.seq").replace("v.prev", "repeat('0', 64)").replace("v.ts", "n.ts")
    row = insert.replace(written, "SELECT n.seq, 1, repeat('0', 64), repeat('1', 64), n.ts,").replace(" FROM x", " FROM n")
    hashed = insert.replace(written, f"SELECT n.seq, 1, repeat('0', 64), {n_hash}, n.ts,").replace(" FROM x", " FROM n")
    head_lock = ", (SELECT seq FROM audit_app_chainhead WHERE id = 1 FOR UPDATE) AS locked"
    return {
        "select1": "SELECT 1",
        "peer": "INSERT INTO flk_bench_peer_row (note) VALUES ('released')",
        "row": scratch.format(lock="") + row,
        "hash": scratch.format(lock="") + hashed,
        "head_lock": scratch.format(lock=head_lock) + hashed,
        "writer": writer,
    }


def child(path: Path, *, count: int, rounds: int) -> None:
    """Inside the process that measures: Django on the database of ``DATABASE_URL``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    django.setup()
    import psycopg

    sql = statements()
    samples: dict[str, list[float]] = {name: [] for name in sql}
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
        connection.execute(f"CREATE SEQUENCE flk_bench_scratch_seq START {SCRATCH_SEQ_START}")
        connection.execute("CREATE TABLE flk_bench_peer_row (id bigserial PRIMARY KEY, note text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        cursor = connection.cursor()
        for text in sql.values():  # prepared once each, and checked to run
            for _ in range(20):
                cursor.execute(text, prepare=True)
        for _ in range(rounds):
            for name, text in sql.items():
                started = time.perf_counter()
                for _ in range(count):
                    cursor.execute(text, prepare=True)
                samples[name].append((time.perf_counter() - started) / count)
    path.write_text(json.dumps({"count": count, "rounds": rounds, "samples": samples}))


def report(data: dict) -> str:
    medians = {name: statistics.median(values) * 1000 for name, values in data["samples"].items()}
    lines = [
        f"{data['rounds']} rounds of {data['count']:,} statements per variant, alternating; autocommit, each prepared once; "
        "milliseconds per statement, median of the rounds (minimum and maximum beside it).",
        "",
        "| variant | ms | min / max | added by this part |",
        "|---|---:|---|---:|",
    ]
    previous = None
    for name, title in VARIANTS.items():
        values = [value * 1000 for value in data["samples"][name]]
        added = "" if previous in (None, "select1") else f"{medians[name] - medians[previous]:+.3f}"
        lines.append(f"| {title} | {medians[name]:.3f} | {min(values):.3f} / {max(values):.3f} | {added} |")
        previous = name
    lines += ["", f"The writer's statement costs {medians['writer'] / medians['peer']:.2f} times the peer's one-row `INSERT`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--quick", action="store_true", help="300 statements per round")
    parser.add_argument("--count", type=int, help="statements per variant and round (default 2,000; --quick 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count or (300 if args.quick else 2000)
    if args.child:
        child(args.child, count=count, rounds=args.rounds)
        return

    from bench.audit_data import audit_database, product_env

    with standalone_context(args.pg, prefix="flk-bench-entry-", quick=args.quick) as context:
        database = audit_database(context, entries=1000)
        output = context.workdir / "entry-cost.json"
        command = [context.python, str(Path(__file__).resolve()), "--child", str(output), "--count", str(count), "--rounds", str(args.rounds)]
        subprocess.run(command, env=product_env(context, database), cwd=REPO, check=True)
        data = json.loads(output.read_text())
    print(report(data))


if __name__ == "__main__":
    main()
