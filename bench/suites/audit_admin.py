"""Issue 9: the admin's audit changelist at 1,000,000 entries against the stock Django changelist.

Product: the audit trail's ModelAdmin as shipped (``audit_app/admin.py``: nine filters, search, date
hierarchy, chain status, export links). Peer: a stock ``admin.ModelAdmin`` of the same model with the
same columns, page size (50), ordering and no actions, registered on a separate ``AdminSite`` in the
child process only, with
Django's default pagination (it counts the filtered rows and the whole table on every page) and no
filters, search or date hierarchy: the floor of a Django changelist, which the product's extras come
on top of. Its filtered page and one change are URL lookups (``?event=...``, ``?change_id=...``),
which a stock changelist accepts for any field.

Both read the same clone of the chained trail (``bench/audit_data.py``) in one warmed child process
through Django's test ``Client`` with a logged-in superuser: server time from request to rendered
response, no network. Each repetition runs every case on both sides, alternating which goes first;
before timing, each pair is checked to list the same entries.

    python bench/run.py --only audit-admin
    python -m bench.suites.audit_admin [--entries 1000000] [--repeat 20] [--profile DIR] [--database NAME]

``--database`` times a trail database you keep (built once with ``bench.audit_data``'s generator,
migrated) instead of building a clone: for measuring one change after another.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    AdminTimer,
    Analysis,
    BenchmarkError,
    Context,
    Suite,
    admin_peer_mount,
    log,
    percentile,
    standalone_context,
    statements_summary,
    summary,
)

GOAL_MS = 50.0
PRODUCT_PREFIX, PEER_PREFIX = "/admin/audit_app/auditentry/", "/bench-peer/audit_app/auditentry/"
#: (key, title, product query, peer query, has a goal in docs/performance.md)
CASES = [
    ("first", "first page", "", "", True),
    ("filtered", "filtered page (event = change.failed)", "?event=change.failed", "?event=change.failed", True),
    # The change filter, through the side index of subjects (search is by prefix: change-42 would also find change-420...).
    ("change", "one change's entries (change-42)", "?change_id=change-42", "?change_id=change-42", False),
]
RESULT_MARK = "AUDIT-ADMIN-RESULT "


# -- the child process: Django, both admins, the timing loop ---------------------------------------


def _child(repeat: int, warmup: int, profile_dir: str | None) -> dict[str, Any]:
    import django

    django.setup()
    from django.contrib import admin
    from django.contrib.auth import get_user_model

    from audit_app.admin import AuditEntryAdmin
    from audit_app.models import AuditEntry

    class StockAuditEntryAdmin(admin.ModelAdmin):
        # The same columns as stored (the product's link and coverage columns are its own extras).
        list_display = ("seq", "created_at", "event", "change_id", "state", "actor", "environment", "target", "run_id")
        list_per_page = AuditEntryAdmin.list_per_page
        ordering = ("-seq",)
        # Read-only like the product's: no delete action, so no checkbox column to render.
        actions = None
        # Django's own page, not the product's override of it.
        change_list_template = "admin/change_list.html"

    peer_site = admin.AdminSite(name="bench_peer")
    peer_site.register(AuditEntry, StockAuditEntryAdmin)
    admin_peer_mount(peer_site, "bench_audit_admin_urls")

    user = get_user_model().objects.filter(username="bench-admin").first()
    user = user or get_user_model().objects.create_superuser("bench-admin", "bench@example.com", None)
    timer = AdminTimer(user)
    get = timer.get
    urls = {
        (key, side): prefix + query
        for key, _, product, peer, _ in CASES
        for side, prefix, query in (("product", PRODUCT_PREFIX, product), ("peer", PEER_PREFIX, peer))
    }

    # Untimed: both sides list the same entries, and what each sends to the database.
    listed, statements = {}, {}
    for (key, side), url in urls.items():
        for _ in range(max(warmup, 1)):
            get(url)
        sent, response = timer.statements(url)
        listed[key, side] = [int(seq) for seq in re.findall(r'class="field-seq"><a href="[^"]*">(\d+)</a>', response.content.decode())]
        statements[key, side] = statements_summary(sent)
    for key, *_ in CASES:
        if not listed[key, "product"] or listed[key, "product"] != listed[key, "peer"]:
            raise BenchmarkError(
                f"{key}: the product lists {len(listed[key, 'product'])} entries {sorted(set(listed[key, 'product']) ^ set(listed[key, 'peer']))[:10]} differ"
            )

    load_start = list(os.getloadavg())
    samples: dict[tuple[str, str], list[float]] = {pair: [] for pair in urls}
    cpu: dict[tuple[str, str], list[float]] = {pair: [] for pair in urls}
    for index in range(repeat):
        for key, *_ in CASES:
            for side in ("product", "peer") if index % 2 == 0 else ("peer", "product"):
                wall, used, _ = get(urls[key, side])
                samples[key, side].append(wall)
                cpu[key, side].append(used)
    load_end = list(os.getloadavg())

    profiles = {}
    if profile_dir:
        import cProfile
        import io
        import pstats

        for key, *_ in CASES:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(repeat):
                get(urls[key, "product"])
            profiler.disable()
            target = Path(profile_dir) / f"audit-admin-{key}.prof"
            profiler.dump_stats(target)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
            profiles[key] = str(target)
            (Path(profile_dir) / f"audit-admin-{key}.txt").write_text(text.getvalue())

    return {
        "entries": AuditEntry.objects.order_by("-seq").values_list("seq", flat=True).first(),
        "rows_listed": {key: len(listed[key, "product"]) for key, *_ in CASES},
        "samples_ms": {f"{key}/{side}": [round(value, 3) for value in values] for (key, side), values in samples.items()},
        "cpu_ms": {f"{key}/{side}": [round(value, 3) for value in values] for (key, side), values in cpu.items()},
        "statements": {f"{key}/{side}": value for (key, side), value in statements.items()},
        "load_average": {"start": [round(value, 2) for value in load_start], "end": [round(value, 2) for value in load_end]},
        "profiles": profiles,
    }


# -- the parent: data, child, report ---------------------------------------------------------------


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ms (p95 {percentile(values, 0.95):,.1f})"


def measure(
    context: Context, *, entries: int, repeat: int, warmup: int, profile_dir: str | None = None, database: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Time the pages on a fresh clone of the run's trail of ``entries`` entries (dropped at the
    end), or on ``database`` (a trail of that size the caller owns and keeps)."""
    from bench.audit_data import audit_database, product_env

    name = database or audit_database(context, entries=entries)
    command = [context.python, "-m", "bench.suites.audit_admin", "--child", "--repeat", str(repeat), "--warmup", str(warmup)]
    if profile_dir:
        command += ["--profile", profile_dir]
    log(f"audit-admin: {entries:,} entries, {repeat} repetitions per case and side")
    completed = subprocess.run(command, env=product_env(context, name), cwd=REPO, capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise BenchmarkError(f"audit-admin child: exit code {completed.returncode}\n{completed.stderr[-4000:]}")
    line = next(line for line in reversed(completed.stdout.splitlines()) if line.startswith(RESULT_MARK))
    child = json.loads(line[len(RESULT_MARK) :])
    if database is None:
        context.pg.database_drop(name)

    cases, goals = [], []
    for key, title, product_query, peer_query, has_goal in CASES:
        mine, peer = child["samples_ms"][f"{key}/product"], child["samples_ms"][f"{key}/peer"]
        ratio = statistics.median(mine) / statistics.median(peer)
        cases.append(
            {
                "case": title,
                "product_url": PRODUCT_PREFIX + product_query,
                "peer_url": PEER_PREFIX + peer_query,
                "product_ms": summary(mine),
                "peer_ms": summary(peer),
                "product_cpu_ms": summary(child["cpu_ms"][f"{key}/product"]),
                "peer_cpu_ms": summary(child["cpu_ms"][f"{key}/peer"]),
                "ratio_median": ratio,
                "ratio_p95": percentile(mine, 0.95) / percentile(peer, 0.95),
                "rows": child["rows_listed"][key],
                "product_statements": child["statements"][f"{key}/product"],
                "peer_statements": child["statements"][f"{key}/peer"],
            }
        )
        if has_goal:
            goals.append(
                {
                    "what": f"admin audit changelist, {title}, {entries:,} entries (server time)",
                    "product": _figure(mine),
                    "peer": f"stock ModelAdmin {_figure(peer)}",
                    "ratio": round(ratio, 3),
                    "goal": f"under {GOAL_MS:.0f} ms",
                    "met": statistics.median(mine) < GOAL_MS,
                }
            )
    data = {
        "entries": entries,
        "repeat": repeat,
        "cases": cases,
        "goals": goals,
        "load_average": child["load_average"],
        "profiles": child["profiles"],
    }
    return _markdown(data), data


def _markdown(data: dict[str, Any]) -> str:
    load = data["load_average"]
    lines = [
        f"{data['entries']:,} chained entries on PostgreSQL; server time of one request (Django's test client in one warmed process), "
        f"{data['repeat']} repetitions per case and side, alternating. Load average {load['start'][0]:.2f} at the start of the timing, "
        f"{load['end'][0]:.2f} at its end. Peer: a stock `ModelAdmin` of the same model, same columns, page size and ordering, no actions, "
        "default pagination with counts, no filters, search or date hierarchy.",
        "",
        "| case | product | peer | ratio (median) | CPU ms, product / peer | queries, DB ms: product | queries, DB ms: peer |",
        "|---|---|---|---:|---|---|---|",
    ]
    for case in data["cases"]:
        mine, peer = case["product_ms"], case["peer_ms"]
        lines.append(
            f"| {case['case']} | {mine['median']:,.1f} ms (p95 {mine['p95']:,.1f}) | {peer['median']:,.1f} ms (p95 {peer['p95']:,.1f}) "
            f"| {case['ratio_median']:.2f} | {case['product_cpu_ms']['median']:,.1f} / {case['peer_cpu_ms']['median']:,.1f} "
            f"| {case['product_statements']['queries']}, {case['product_statements']['db_ms']:,.1f} "
            f"| {case['peer_statements']['queries']}, {case['peer_statements']['db_ms']:,.1f} |"
        )
    lines += ["", "| goal | product | peer | ratio | goal | met |", "|---|---|---|---:|---|---|"]
    for row in data["goals"]:
        lines.append(
            f"| {row['what']} | {row['product']} | {row['peer']} | {row['ratio']:.2f} | {row['goal']} | {'yes' if row['met'] else '**no**'} |"
        )
    for key, target in data.get("profiles", {}).items():
        lines.append(f"\ncProfile of the product's {key} case: `{target}` (top functions beside it, `.txt`).")
    return "\n".join(lines)


def audit_admin_analysis(context: Context) -> Analysis:
    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        entries = 100_000 if context.quick else 1_000_000
        repeat = 3 if context.quick else max(20, context.repeat)
        return measure(context, entries=entries, repeat=repeat, warmup=1 if context.quick else 3)

    return Analysis(name="audit-admin", title="Admin audit changelist against the stock Django changelist (docs/performance.md)", run=run)


def suite(context: Context) -> Suite:
    return Suite(name="audit-admin", benchmarks=[], analyses=[audit_admin_analysis(context)])


# -- stand-alone -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", metavar="DIR", help="also cProfile the product's requests of each case into DIR")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", help="an existing trail database of --entries entries, kept (default: a fresh clone, dropped)")
    options = parser.parse_args()
    if options.child:
        print(RESULT_MARK + json.dumps(_child(options.repeat, options.warmup, options.profile)), flush=True)
        return

    fields = {"sizes": [], "repeat": options.repeat, "repeat_large": options.repeat, "warmup": options.warmup, "profile": bool(options.profile)}
    with standalone_context(options.pg, **fields) as context:
        if options.profile:
            Path(options.profile).mkdir(parents=True, exist_ok=True)
        markdown, data = measure(
            context, entries=options.entries, repeat=options.repeat, warmup=options.warmup, profile_dir=options.profile, database=options.database
        )
        print(markdown)
        print(json.dumps(data["goals"], indent=2))


if __name__ == "__main__":
    main()
