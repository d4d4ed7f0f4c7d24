"""Lock cycles per second: the product's Redis lease lock (acquire with its fencing token from the
database, release by compare-and-delete), with and without its audit entries, beside redis-py's
own ``Lock`` and beside redis-py's ``Lock`` plus the same number of one-row commits, in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> REDIS_URL=redis://127.0.0.1:6379/0 \\
        python bench/lock_cycles.py [--cycles 2000]

The database must be migrated (``python manage.py migrate``); a throwaway one is best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.db import connection, transaction

    from audit_app.services import Actor, audit_record
    from changes_app.redis_lock import RedisLeaseLock

    client = redis.Redis.from_url(settings.REDIS_URL)
    actor = Actor(name="bench")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    lock = RedisLeaseLock(name, lease_seconds=60)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE bench_commit (id serial PRIMARY KEY, at timestamptz DEFAULT now())")

    def product_cycle():
        lease = lock.try_acquire(run_id=uuid.uuid4(), actor=actor)
        lock.release(lease)

    def product_cycle_audited():
        run_id = uuid.uuid4()
        lease = lock.try_acquire(run_id=run_id, actor=actor)
        audit_record(event="lock.acquired", actor=actor, environment="bench", run_id=run_id, details={"token": lease.token})
        lock.release(lease)
        audit_record(event="lock.released", actor=actor, environment="bench", run_id=run_id, details={"token": lease.token})

    def raw_cycle():
        handle = client.lock(f"{name}-raw", timeout=60, blocking=False)
        handle.acquire(blocking=False)
        handle.release()

    def raw_cycle_with_commits():
        handle = client.lock(f"{name}-raw", timeout=60, blocking=False)
        handle.acquire(blocking=False)
        for _ in range(3):  # the product's cycle commits the fence token and two entries
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("INSERT INTO bench_commit DEFAULT VALUES")
        handle.release()

    cases = {
        "redis-py Lock": raw_cycle,
        "product lock (fencing token)": product_cycle,
        "redis-py Lock + 3 one-row commits": raw_cycle_with_commits,
        "product lock + its audit entries": product_cycle_audited,
    }
    rates: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, cycle in cases.items():  # alternated within each round
            started = time.perf_counter()
            for _ in range(args.cycles):
                cycle()
            rates[case].append(args.cycles / (time.perf_counter() - started))
    medians = {case: statistics.median(values) for case, values in rates.items()}
    print(f"{args.cycles} cycles x {args.rounds} rounds, medians (cycles per second):")
    for case, rate in medians.items():
        print(f"  {case:<40} {rate:10.0f}/s  ({1000 / rate:.3f} ms per cycle)")
    print(f"ratio product/raw without audit: {medians['redis-py Lock'] / medians['product lock (fencing token)']:.2f}x the time")
    print(
        f"ratio product+audit/raw+commits: {medians['redis-py Lock + 3 one-row commits'] / medians['product lock + its audit entries']:.2f}x the time"
    )
    client.delete(f"flamingock:lock:{name}", f"flamingock:lock:{name}:holder", f"{name}-raw")


if __name__ == "__main__":
    main()
