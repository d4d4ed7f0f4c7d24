"""Run every benchmark, write the report under bench/results/ and print the tables.

    python bench/run.py                  # 1,000 changes, full repetitions, profile
    python bench/run.py --quick          # 1 repetition, no warm-up: a smoke run
    python bench/run.py --full           # adds 10,000 changes
    python bench/run.py --sizes 500,2000 --only apply --no-profile

See bench/README.md for what is measured and how to read the report.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import REPO, BenchmarkError, Context, analysis_execute, benchmark_execute, log  # noqa: E402
from bench.machine import load_average, machine_facts  # noqa: E402
from bench.pg import PostgresServer  # noqa: E402
from bench.report import baseline_table, goals_table, ratios_table, report_write, results_table, scaling_table  # noqa: E402
from bench.suites import SUITES  # noqa: E402

DEFAULT_PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or min(sizes) < 1 or max(sizes) > 99_999:
        raise argparse.ArgumentTypeError("sizes are between 1 and 99,999")
    return sizes


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the product against its peers, in one run.")
    parser.add_argument("--sizes", type=_sizes, default=[1000], help="numbers of changes, comma-separated (default 1000)")
    parser.add_argument("--full", action="store_true", help="add 10,000 changes to the sizes")
    parser.add_argument("--quick", action="store_true", help="one repetition, no warm-up (a smoke run)")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions per case up to 2,000 changes (default 7)")
    parser.add_argument("--repeat-large", type=int, default=3, help="timed repetitions per case above 2,000 changes (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case before timing (default 1)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN", help="benchmarks whose name matches (glob; repeatable)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the where-the-time-goes analysis")
    parser.add_argument("--pg", default=DEFAULT_PG, help=f"PostgreSQL server URL without a database (default {DEFAULT_PG})")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results", help="directory for reports (default bench/results)")
    parser.add_argument("--baseline", type=Path, help="a previous report.json: show its ratios beside this run's")
    parser.add_argument("--keep", action="store_true", help="keep the generated code (the databases are always dropped)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    options = parser.parse_args(argv)
    if options.full and 10_000 not in options.sizes:
        options.sizes = sorted([*options.sizes, 10_000])
    if options.quick:
        options.repeat, options.repeat_large, options.warmup = 1, 1, 0
    return options


def _selected(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, pattern if any(c in pattern for c in "*?[") else f"*{pattern}*") for pattern in patterns)


def main(argv: list[str] | None = None) -> int:
    options = arguments(argv)
    baseline = None
    if options.baseline:
        baseline = {"path": str(options.baseline), "data": json.loads(options.baseline.read_text())}
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="flk-bench-"))
    output_dir = options.output / f"{started_at:%Y%m%d-%H%M%S}-{'-'.join(str(size) for size in options.sizes)}"
    machine = machine_facts()
    with contextlib.ExitStack() as cleanups:
        if not options.keep:
            cleanups.callback(shutil.rmtree, workdir, ignore_errors=True)
        pg = PostgresServer(options.pg)
        cleanups.callback(pg.close)
        commit_at_start = pg.commit_latency()
        context = Context(
            sizes=options.sizes,
            repeat=options.repeat,
            repeat_large=options.repeat_large,
            warmup=options.warmup,
            quick=options.quick,
            profile=options.profile,
            workdir=workdir,
            pg=pg,
            cleanups=cleanups,
        )
        suites = [importlib.import_module(module).suite(context) for module in SUITES]
        benchmarks = [benchmark for suite in suites for benchmark in suite.benchmarks if _selected(benchmark.name, options.only)]
        analyses = [analysis for suite in suites for analysis in suite.analyses if not options.only or _selected(analysis.name, options.only)]
        if options.list:
            for benchmark in benchmarks:
                print(f"{benchmark.key}: {benchmark.title}")
            for analysis in analyses:
                print(f"{analysis.name}: {analysis.title}")
            return 0
        try:
            for benchmark in benchmarks:
                repeat = benchmark.repeat or context.repeat_for(benchmark.size)
                benchmark_execute(benchmark, repeat=repeat, warmup=options.warmup)
            output_dir.mkdir(parents=True, exist_ok=True)
            for analysis in analyses:
                analysis_execute(analysis, output_dir)
        except BenchmarkError as error:
            log(f"FAILED: {error}")
            return 1
        postgres = pg.facts()
        postgres["commit latency at start"] = commit_at_start
        postgres["commit latency at end"] = pg.commit_latency()
    load_at_end = load_average()
    machine["load_average_at_end"] = load_at_end
    meta = {
        "started_at": f"{started_at:%Y-%m-%d %H:%M:%S}",
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "elapsed_s": time.perf_counter() - clock,
        "sizes": options.sizes,
        "repeat": options.repeat,
        "repeat_large": options.repeat_large,
        "warmup": options.warmup,
        "quick": options.quick,
        "machine": machine,
        "postgresql": postgres,
        "baseline": baseline,
    }
    busiest = max([*machine["load_average_at_start"][:1], *load_at_end[:1]], default=0)
    if busiest > (machine["usable_cores"] or 1) * 0.5:
        meta["busy_warning"] = (
            f"The machine was busy (1-minute load average up to {busiest} on {machine['usable_cores']} cores): "
            "absolute times are inflated; the ratios, measured alternately in the same run, hold better."
        )
    md_path, json_path = report_write(output_dir, meta, benchmarks, analyses)
    if goals_table(analyses):
        print("\n".join(["", "## Goals (docs/performance.md)", "", *goals_table(analyses), ""]))
    print("\n".join(["", "## Ratios (product / peer, below 1 = product faster)", "", *ratios_table(benchmarks), ""]))
    print("\n".join(["## Results", "", *results_table(benchmarks), ""]))
    if scaling_table(benchmarks):
        print("\n".join(["## Scaling between sizes", "", *scaling_table(benchmarks), ""]))
    if baseline and baseline_table(benchmarks, baseline["data"]):
        print("\n".join([f"## Against {options.baseline}", "", *baseline_table(benchmarks, baseline["data"]), ""]))
    if meta.get("busy_warning"):
        print(f"> {meta['busy_warning']}\n")
    print(f"report: {md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path}\n        {json_path.name} beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
