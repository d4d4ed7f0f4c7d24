"""Issue 23, part 4: the audit trail at ten million entries, a large organisation's quarter (the ``trail-10m`` analysis).

Every measurement of the smaller audit suites, at 10,000,000 entries, on ONE trail shared between
runs (``bench/audit_data.py``, ``shared_trail``): built once as a read-only template database named by
its entry count and a digest of the migrations, the chain's code and the generator (a stale one is
rebuilt), after a check of the free disk; each run works on its own clone of it, dropped at the end.
Its entries are spread evenly over one quarter, 2026-01-01 to 2026-04-01. In one run, on that clone:

- the admin's audit changelist, first page and filtered page, against a stock ``ModelAdmin``
  (``audit_admin.measure``): goal under 50 ms each;
- the API audit list served by gunicorn at 100 requests a second, against DRF's page numbers
  (``api_latency.run_analysis``): goal p99 under 100 ms;
- ``audit verify`` of the whole chain against a single-threaded recompute, and from the last signed
  checkpoint (``audit_bulk.measure``, which also times the CSV export against ``psql \\copy``): goals
  under 60 s on the machine's cores, under 1 s;
- the evidence pack of the quarter (``flamingock evidence --from 2026-01-01 --to 2026-04-01 --output
  FILE``) against ``psql \\copy`` of the same rows (the pack stores ``audit.jsonl`` uncompressed; if
  it compressed it, the peer would be ``\\copy`` piped through ``gzip -1``): goal streamed, peak
  resident memory under 300 MB, within 3x the peer's time. A product without the ``evidence``
  command reports the case "not available" and the rest of the suite still runs.

It runs only when asked for by name (``--only trail-10m``): a plain ``python bench/run.py`` leaves it
out. ``--quick`` runs it at 100,000 entries (a shared trail of its own), one repetition.

    python bench/run.py --only trail-10m                       # 10,000,000 entries
    python bench/run.py --quick --only trail-10m               # 100,000 entries
    python -m bench.suites.trail_scale --entries 100000 [--repeat 3]
    python -m bench.suites.trail_scale --list-shared | --drop-shared
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from bench.audit_data import drop_shared_trails, product_env, shared_trail, shared_trail_clone, shared_trails
from bench.harness import Analysis, BenchmarkError, Context, Suite, log, percentile, standalone_context, summary
from bench.machine import load_average
from bench.suites import api_latency, audit_admin, audit_bulk

NAME = "trail-10m"
ENTRIES = 10_000_000
QUICK_ENTRIES = 100_000
#: The quarter the shared trail spans (``bench.audit_data.QUARTER``), as the CLI takes it (``--to`` exclusive).
PERIOD = ("2026-01-01", "2026-04-01")
VERIFY_GOAL_S = 60.0
CHECKPOINT_GOAL_S = 1.0
PACK_RATIO_GOAL = 3.0
PACK_RSS_GOAL_MB = 300.0
TABLE = "audit_app_auditentry"


@dataclasses.dataclass(frozen=True)
class Plan:
    entries: int
    admin_repeat: int
    admin_warmup: int
    api: api_latency.Options
    bulk_repeat: int
    pack_repeat: int

    @classmethod
    def for_context(cls, context: Context, entries: int | None = None) -> Plan:
        if context.quick:
            entries = entries or QUICK_ENTRIES
            return cls(entries, 3, 1, api_latency.Options(entries=entries, rounds=1, seconds=3, closed_seconds=3), 1, 1)
        entries = entries or ENTRIES
        return cls(entries, max(20, context.repeat), 3, api_latency.Options(entries=entries, rounds=3, seconds=10, closed_seconds=10), 3, 3)


# -- the evidence pack against psql \copy ----------------------------------------------------------


def evidence_available(env: dict[str, str], python: str) -> tuple[bool, str]:
    """Whether this product has ``flamingock evidence`` (its help answers); if not, why."""
    try:
        audit_bulk.timed([python, "manage.py", "flamingock", "evidence", "--help"], env, timeout=120)
    except BenchmarkError as error:
        return False, next((line for line in reversed(str(error).splitlines()) if line.strip()), "")[:300]
    return True, ""


def _pack_audit_member(path: Path) -> dict[str, Any]:
    """What the pack holds of the trail: ``audit.jsonl``'s size, compression and line count."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("audit.jsonl")
        lines = 0
        with archive.open(info) as handle:
            for _ in handle:
                lines += 1
        return {
            "members": archive.namelist(),
            "audit_jsonl_mb": info.file_size / 1e6,
            "compressed": info.compress_type != zipfile.ZIP_STORED,
            "audit_jsonl_lines": lines,
        }


def measure_pack(context: Context, *, database: str, entries: int, repeat: int, signing_key: str) -> dict[str, Any]:
    """``flamingock evidence`` of the quarter against ``psql \\copy`` of the quarter's rows, alternating,
    each a fresh process: wall, CPU, peak resident memory (``wait4``). The first pack is checked
    untimed: ``audit.jsonl`` holds at least the quarter's entries."""
    env = product_env(context, database)
    workdir = context.workdir / "trail-pack"
    workdir.mkdir(parents=True, exist_ok=True)
    env.update(
        FLAMINGOCK_AUDIT_SIGNING_KEY=signing_key,
        FLAMINGOCK_VAR_DIR=str(workdir / "var"),
        FLAMINGOCK_EVIDENCE_DIR=str(workdir / "evidence"),
        FLAMINGOCK_ENVIRONMENT="bench",
    )
    available, why = evidence_available(env, context.python)
    if not available:
        log(f"{NAME}: the evidence pack is not available in this product: {why}")
        return {"available": False, "why": why}
    url = context.pg.database_url(database)
    rows = context.pg.scalar(database, f"SELECT count(*) FROM {TABLE} WHERE created_at >= '{PERIOD[0]}' AND created_at < '{PERIOD[1]}'")
    select = f"SELECT * FROM {TABLE} WHERE created_at >= '{PERIOD[0]}' AND created_at < '{PERIOD[1]}' ORDER BY seq"
    command = [context.python, "manage.py", "flamingock", "evidence", "--from", PERIOD[0], "--to", PERIOD[1], "--json"]
    samples: dict[str, list[dict[str, float]]] = {"pack": [], "copy": []}
    checks: dict[str, Any] = {"period_rows": rows}
    log(f"{NAME}: evidence pack of {PERIOD[0]}..{PERIOD[1]} ({rows:,} entries) against psql \\copy, {repeat} repetitions")
    for index in range(repeat):
        for case in ("pack", "copy") if index % 2 == 0 else ("copy", "pack"):
            if case == "pack":
                target = workdir / "pack.zip"
                try:
                    run = audit_bulk.timed([*command, "--output", str(target)], env, timeout=7200)
                except BenchmarkError as error:
                    log(f"{NAME}: the evidence pack failed: {error}")
                    return {"available": True, "failed": str(error)[-2000:], "period_rows": rows}
                if "pack" not in checks:
                    checks["pack"] = _pack_audit_member(target)
                    checks["pack_mb"] = target.stat().st_size / 1e6
                    checks["output"] = json.loads(run["stdout"]) if run["stdout"].lstrip().startswith("{") else run["stdout"][-500:]
                target.unlink()
                for leftover in (workdir / "evidence").rglob("*.zip"):  # the product's own copy of the pack
                    leftover.unlink()
            else:
                target = workdir / "copy.csv"
                run = audit_bulk.timed(["psql", url, "-X", "-q", "-c", f"\\copy ({select}) TO '{target}' CSV HEADER"], context.base_env())
                checks["copy_mb"] = target.stat().st_size / 1e6
                target.unlink()
            samples[case].append({key: run[key] for key in ("wall_s", "cpu_s", "rss_mb")})
        log(f"{NAME} pack {index + 1}/{repeat}: product {samples['pack'][-1]['wall_s']:.2f} s, psql {samples['copy'][-1]['wall_s']:.2f} s")
    if checks["pack"]["audit_jsonl_lines"] < rows:
        raise BenchmarkError(f"{NAME}: the pack's audit.jsonl has {checks['pack']['audit_jsonl_lines']:,} lines for {rows:,} entries of the period")
    return {"available": True, **checks, "samples": samples, "cases": {case: _cases(values) for case, values in samples.items()}}


def _cases(values: list[dict[str, float]]) -> dict[str, Any]:
    return {key: summary([value[key] for value in values]) for key in ("wall_s", "cpu_s", "rss_mb")}


# -- goals and report --------------------------------------------------------------------------------


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (p95 {percentile(values, 0.95):.2f})"


def goals(
    entries: int, admin: dict[str, Any] | None, api: dict[str, Any] | None, bulk: dict[str, Any] | None, pack: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The issue's goals at this size, from what each measurement found (``None``: not run)."""
    rows = [*(admin["goals"] if admin else []), *[row for row in (api["goals"] if api else []) if "requests a second" in row["what"]]]
    if bulk:
        rows += _bulk_goals(entries, bulk)
    if pack:
        rows.append(_pack_goal(entries, pack))
    return rows


def _bulk_goals(entries: int, bulk: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    walls = {case: [sample["wall_s"] for sample in bulk["samples"][case]] for case in ("verify", "peer_verify", "checkpoint")}
    verify = statistics.median(walls["verify"])
    rows.append(
        {
            "what": f"audit verify, whole chain, {entries:,} entries (whole process)",
            "product": _figure(walls["verify"]),
            "peer": f"single-threaded recompute {_figure(walls['peer_verify'])}",
            "ratio": round(verify / statistics.median(walls["peer_verify"]), 3),
            "goal": f"under {VERIFY_GOAL_S:.0f} s on {os.cpu_count()} cores",
            "met": verify < VERIFY_GOAL_S,
        }
    )
    checkpoint = statistics.median(walls["checkpoint"])
    rows.append(
        {
            "what": f"audit verify from the last signed checkpoint, {entries:,} entries (whole process)",
            "product": _figure(walls["checkpoint"]),
            "peer": "-",
            "ratio": None,
            "goal": f"under {CHECKPOINT_GOAL_S:.0f} s",
            "met": checkpoint < CHECKPOINT_GOAL_S,
        }
    )
    return rows


def _pack_goal(entries: int, pack: dict[str, Any]) -> dict[str, Any]:
    what = f"evidence pack of a quarter, {pack.get('period_rows', entries):,} entries (whole process)"
    goal = f"streamed, under {PACK_RSS_GOAL_MB:.0f} MB, within {PACK_RATIO_GOAL:.0f}x of psql \\copy"
    if not pack["available"]:
        return {"what": what, "product": "not available", "peer": "-", "ratio": None, "goal": goal, "met": None}
    if pack.get("failed"):
        return {"what": what, "product": "failed (see the report)", "peer": "-", "ratio": None, "goal": goal, "met": False}
    mine = [sample["wall_s"] for sample in pack["samples"]["pack"]]
    peer = [sample["wall_s"] for sample in pack["samples"]["copy"]]
    rss = max(sample["rss_mb"] for sample in pack["samples"]["pack"])
    ratio = statistics.median(mine) / statistics.median(peer)
    return {
        "what": what,
        "product": f"{_figure(mine)}, peak {rss:.0f} MB",
        "peer": f"psql \\copy {_figure(peer)}",
        "ratio": round(ratio, 3),
        "goal": goal,
        "met": ratio <= PACK_RATIO_GOAL and rss < PACK_RSS_GOAL_MB,
    }


def _met(value: bool | None) -> str:
    return "not available" if value is None else "yes" if value else "**no**"


def markdown(data: dict[str, Any]) -> str:
    trail = data["trail"]
    built = f"built in {trail['build_s']:.0f} s" if trail.get("built") else "reused"
    disk = trail["disk"]
    lines = [
        f"{data['entries']:,} chained entries over one quarter on PostgreSQL: the shared trail `{trail['name']}` ({built}; "
        f"{disk['bytes_per_entry']} bytes per entry, {disk['free'] / 1e9:.0f} GB free before the run), cloned for this run in "
        f"{data['clone_s']:.0f} s. Load average {data['load_average']['start'][0]:.2f} at the start, {data['load_average']['end'][0]:.2f} at the end.",
        "",
        "| goal | product | peer | ratio | goal | met |",
        "|---|---|---|---:|---|---|",
    ]
    for row in data["goals"]:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        lines.append(f"| {row['what']} | {row['product']} | {row['peer']} | {ratio} | {row['goal']} | {_met(row['met'])} |")
    pack = data["pack"]
    if pack is not None:
        lines += ["", "### Evidence pack against psql \\copy", ""]
    if pack is None:
        lines += []  # not run (--cases)
    elif not pack["available"]:
        lines.append(f"Not available: this product has no `flamingock evidence` command ({pack['why']}).")
    elif pack.get("failed"):
        lines.append(f"The evidence pack failed:\n\n```\n{pack['failed']}\n```")
    else:
        member = pack["pack"]
        lines += [
            f"{pack['period_rows']:,} entries in the period. Pack {pack['pack_mb']:.0f} MB; its audit.jsonl {member['audit_jsonl_mb']:.0f} MB, "
            f"{'compressed' if member['compressed'] else 'stored uncompressed'}, {member['audit_jsonl_lines']:,} lines; psql's CSV {pack['copy_mb']:.0f} MB.",
            "",
            "| case | wall | CPU of the process | peak RSS |",
            "|---|---|---|---|",
        ]
        for title, key in (("`flamingock evidence` (the quarter)", "pack"), ("`psql \\copy` of the same rows (peer)", "copy")):
            case = pack["cases"][key]
            lines.append(
                f"| {title} | {case['wall_s']['median']:.2f} s (p95 {case['wall_s']['p95']:.2f}) | {case['cpu_s']['median']:.2f} s "
                f"| {case['rss_mb']['median']:.0f} MB (max {case['rss_mb']['max']:.0f}) |"
            )
    titles = {"admin": "Admin audit changelist", "api": "API audit list (gunicorn)", "bulk": "Export and verify"}
    for key, text in data["markdown"].items():
        lines += ["", f"### {titles[key]}", "", text]
    return "\n".join(lines)


# -- the analysis ----------------------------------------------------------------------------------


CASES = ("admin", "api", "bulk", "pack")


def run(context: Context, plan: Plan, output_dir: Path, cases: tuple[str, ...] = CASES) -> tuple[str, dict[str, Any]]:
    """Every case of ``cases`` on one clone of the shared trail, in the order of ``CASES``."""
    load_start = load_average()
    name, trail = shared_trail(context, plan.entries)
    started = time.perf_counter()
    clone = shared_trail_clone(context, name)
    clone_s = time.perf_counter() - started
    signing_key = audit_bulk.signing_key_new()
    texts: dict[str, str] = {}
    admin = api = bulk = pack = None
    if "admin" in cases:
        texts["admin"], admin = audit_admin.measure(context, entries=plan.entries, repeat=plan.admin_repeat, warmup=plan.admin_warmup, database=clone)
    if "api" in cases:
        texts["api"], api = api_latency.run_analysis(context, plan.api, output_dir / "trail-10m-api", database=clone)
    if "bulk" in cases:
        texts["bulk"], bulk = audit_bulk.measure(context, entries=plan.entries, repeat=plan.bulk_repeat, database=clone, signing_key=signing_key)
    if "pack" in cases:
        pack = measure_pack(context, database=clone, entries=plan.entries, repeat=plan.pack_repeat, signing_key=signing_key)
    data = {
        "entries": plan.entries,
        "cases": list(cases),
        "trail": trail,
        "clone_s": clone_s,
        "plan": {**dataclasses.asdict(plan), "api": dataclasses.asdict(plan.api)},
        "load_average": {"start": load_start, "end": load_average()},
        "goals": goals(plan.entries, admin, api, bulk, pack),
        "admin": admin,
        "api": api,
        "bulk": bulk,
        "pack": pack,
        "markdown": texts,
    }
    return markdown(data), data


def explicitly_selected(argv: list[str] | None = None) -> bool:
    """Whether ``bench/run.py`` was asked for this suite by name (``--only PATTERN``, as it matches)."""
    argv = sys.argv[1:] if argv is None else argv
    patterns = [argv[index + 1] for index, item in enumerate(argv[:-1]) if item == "--only"]
    patterns += [item.split("=", 1)[1] for item in argv if item.startswith("--only=")]
    return any(fnmatch.fnmatch(NAME, pattern if any(c in pattern for c in "*?[") else f"*{pattern}*") for pattern in patterns)


def suite(context: Context) -> Suite:
    if not explicitly_selected():
        # Ten million entries take tens of minutes and gigabytes: only when asked for by name.
        return Suite(name=NAME, benchmarks=[], analyses=[])
    entries = int(os.environ["BENCH_TRAIL_ENTRIES"]) if os.environ.get("BENCH_TRAIL_ENTRIES") else None
    plan = Plan.for_context(context, entries)
    return Suite(
        name=NAME,
        benchmarks=[],
        analyses=[
            Analysis(
                name=NAME,
                title=f"The audit trail at {plan.entries:,} entries: admin, API at 100/s (gunicorn), verify, evidence pack (docs/performance.md)",
                run=lambda output_dir: run(context, plan, output_dir),
            )
        ],
    )


# -- stand-alone -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=ENTRIES)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of verify, export and the pack (the admin pages: at least 20)")
    parser.add_argument("--quick", action="store_true", help="one repetition of each, short API phases")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--output", type=Path, help="directory for trail-10m.md and .json (default: bench/results/trail-<entries>-<pid>)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    parser.add_argument("--list-shared", action="store_true", help="list the shared trails kept on the server, and exit")
    parser.add_argument("--drop-shared", action="store_true", help="drop every shared trail, and exit")
    options = parser.parse_args(argv)
    cases = tuple(case for case in CASES if case in options.cases.split(","))
    if not cases or set(options.cases.split(",")) - set(CASES):
        parser.error(f"--cases: comma-separated, of {', '.join(CASES)}")
    fields = {"sizes": [], "repeat": options.repeat, "repeat_large": options.repeat, "quick": options.quick}
    with standalone_context(options.pg, prefix="flk-bench-trail-", **fields) as context:
        if options.list_shared:
            for name, size in shared_trails(context):
                print(f"{name}\t{size / 1e9:.2f} GB")
            return
        if options.drop_shared:
            for name in drop_shared_trails(context):
                print(f"dropped {name}")
            return
        plan = Plan.for_context(context, options.entries)
        if not options.quick:
            plan = dataclasses.replace(plan, bulk_repeat=options.repeat, pack_repeat=options.repeat)
        output_dir = options.output or Path(__file__).resolve().parents[1] / "results" / f"trail-{options.entries}-{os.getpid()}"
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            text, data = run(context, plan, output_dir, cases)
        except BenchmarkError as error:
            raise SystemExit(f"{NAME}: {error}") from None
    (output_dir / "trail-10m.md").write_text(text + "\n")
    (output_dir / "trail-10m.json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    print(f"\nwritten to {output_dir}")


if __name__ == "__main__":
    main()
