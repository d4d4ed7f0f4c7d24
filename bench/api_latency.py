"""API latency with a large audit trail (docs/performance.md): the ``api-latency`` analysis of
bench/suites/api_latency.py, run alone. ``python bench/run.py --only api-latency`` runs the same
inside the one command.

    python bench/api_latency.py                   # 1,000,000 entries, 5 rounds (about 13 minutes)
    python bench/api_latency.py --quick           # 100,000 entries, 1 round of 3 s phases
    python bench/api_latency.py --workers 5 --worker-class gthread --threads 2

Writes api-latency.md and api-latency.json (and the server's log, the request profile) under
bench/results/api-latency-<UTC time>/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, Context  # noqa: E402
from bench.machine import load_average  # noqa: E402
from bench.pg import PostgresServer  # noqa: E402
from bench.suites.api_latency import Options, run_analysis  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--quick", action="store_true", help="100,000 entries, 1 round, 3 s phases")
    parser.add_argument("--entries", type=int, help="audit entries (default 1,000,000; --quick 100,000)")
    parser.add_argument("--rounds", type=int, help="rounds of every phase (default 5; --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds of each fixed-rate phase (default 10; --quick 3)")
    parser.add_argument("--closed-seconds", type=float, help="seconds of each closed-loop phase (default 10; --quick 3)")
    parser.add_argument("--rate", type=float, help="requests a second of the fixed-rate phases (default 100)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default 4)")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], help="gunicorn worker class (default sync)")
    parser.add_argument("--threads", type=int, help="threads per gthread worker")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip cProfile of one request")
    args = parser.parse_args()

    with contextlib.ExitStack() as cleanups:
        pg = PostgresServer(args.pg)
        cleanups.callback(pg.close)
        workdir = Path(tempfile.mkdtemp(prefix="flk-bench-api-"))
        context = Context(
            sizes=[1000], repeat=5, repeat_large=3, warmup=0, quick=args.quick, profile=args.profile, workdir=workdir, pg=pg, cleanups=cleanups
        )
        options = Options.for_context(context)
        chosen = {
            "entries": args.entries, "rounds": args.rounds, "seconds": args.seconds, "closed_seconds": args.closed_seconds, "rate": args.rate,
            "workers": args.workers, "worker_class": args.worker_class, "threads": args.threads,
        }  # fmt: skip
        options = dataclasses.replace(options, **{key: value for key, value in chosen.items() if value is not None})
        output_dir = REPO / "bench" / "results" / f"api-latency-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        text, data = run_analysis(context, options, output_dir)
    data["load_average_after"] = load_average()
    (output_dir / "api-latency.md").write_text(text + "\n")
    (output_dir / "api-latency.json").write_text(json.dumps(data, indent=2))
    print(text)
    print("\n| goal | product | peer | ratio | met |\n|---|---|---|---:|---|")
    for goal in data["goals"]:
        print(f"| {goal['what']} ({goal['goal']}) | {goal['product']} | {goal['peer']} | {goal['ratio']} | {'yes' if goal['met'] else 'NO'} |")
    print(f"\nwritten to {output_dir.relative_to(REPO)}")


if __name__ == "__main__":
    main()
