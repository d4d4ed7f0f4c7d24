"""Lock cycles (docs/performance.md): the ``lock-cycles`` analysis of bench/suites/lock_cycles.py, run alone.
``python bench/run.py --only lock-cycles`` runs the same inside the one command.

    python bench/lock_cycles.py                     # a throwaway migrated database, 5 rounds of 2,000 cycles
    python bench/lock_cycles.py --quick             # 5 rounds of 200 cycles
    python bench/lock_cycles.py --profile           # cProfile of the product's cycles, then exit

The product's Redis lease lock (acquire, fencing token, release) beside redis-py's ``Lock``, and
both with their commits (the product's ``lock.acquired``/``lock.released`` entries, the peer's
one-row commits), measured in one process, alternating. Redis: ``BENCH_REDIS`` (default
redis://127.0.0.1:6379/0). Writes lock-cycles.md and lock-cycles.json under
bench/results/lock-cycles-<UTC time>/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, Context, standalone_context  # noqa: E402
from bench.suites.lock_cycles import REDIS_URL, measure, run_analysis  # noqa: E402


def child(path: Path, *, cycles: int, rounds: int) -> None:
    """Inside the process that measures: Django on the database of ``DATABASE_URL``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    django.setup()
    path.write_text(json.dumps(measure(cycles=cycles, rounds=rounds, redis_url=os.environ.get("REDIS_URL") or REDIS_URL)))


def profile(context: Context, cycles: int) -> None:
    """cProfile of the product's plain and audited cycles, in a child on a throwaway database."""
    import subprocess

    from bench.audit_data import audit_database, product_env

    database = audit_database(context, entries=1000)
    code = (
        "import cProfile, pstats, django, json; django.setup()\n"
        "from bench.suites.lock_cycles import measure\n"
        f"profiler = cProfile.Profile(); profiler.enable(); measure(cycles={cycles}, rounds=1, warmup=20); profiler.disable()\n"
        "pstats.Stats(profiler).sort_stats('cumulative').print_stats(40)\n"
    )
    env = {**product_env(context, database), "REDIS_URL": REDIS_URL}
    subprocess.run([context.python, "-c", code], env=env, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--quick", action="store_true", help="200 cycles per round")
    parser.add_argument("--cycles", type=int, help="cycles per case and round (default 2,000; --quick 200)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the cycles instead of measuring")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, cycles=args.cycles or 2000, rounds=args.rounds or 5)
        return

    with standalone_context(args.pg, prefix="flk-bench-lock-", quick=args.quick, profile=args.profile) as context:
        if args.profile:
            profile(context, args.cycles or 500)
            return
        output_dir = REPO / "bench" / "results" / f"lock-cycles-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        text, data = run_analysis(context, output_dir, cycles=args.cycles, rounds=args.rounds)
    (output_dir / "lock-cycles.md").write_text(text + "\n")
    (output_dir / "lock-cycles.json").write_text(json.dumps(data, indent=2))
    print(text)
    print(f"\nwritten to {output_dir.relative_to(REPO)}")


if __name__ == "__main__":
    main()
