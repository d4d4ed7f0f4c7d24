"""Issue 18: the governance pages at scale against the stock Django change page of the same model.

On the run's chained trail of 1,000,000 entries (``bench/audit_data.py``, cloned) plus a catalogue
of 10,000 changes in code (a generated change package whose ids, ``change-1`` ... ``change-10000``,
are the change ids of the trail, so a change has about 200 entries of history), each with its state
projection (APPLIED, checksum as in code), runs whose ``results`` name them, and requests with
decisions and comments, one warmed child process serves two admins through Django's test
``Client`` with a logged-in superuser and times the server side of three pages:

- the change page of a change with history (``/admin/changes_app/changerecord/<pk>/change/``);
- the request page of a request with decisions (``/admin/changes_app/changerequest/<pk>/change/``);
- the audit entry page (``/admin/audit_app/auditentry/<pk>/change/``).

Peer: a stock ``admin.ModelAdmin`` of the same model on a separate ``AdminSite`` (child process
only), its change page of the same row: the floor of a Django change page. Goal: each product page
under 100 ms of server time (median).

    python bench/run.py --only governance-pages
    python -m bench.suites.governance_pages [--entries 1000000] [--changes 10000] [--repeat 20] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
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

GOAL_MS = 100.0
PACKAGE = "bench_governance_changes"
#: The change whose page is measured: in the trail (change-<seq % 5000>; seq % 5 == 1: change.applied), so it has history.
CHANGE = "change-41"
#: (key, title, product URL prefix, peer URL prefix)
CASES = [
    ("change", f"change page ({CHANGE}, with history)", "/admin/changes_app/changerecord/", "/bench-peer/changes_app/changerecord/"),
    ("request", "request page (with decisions and comments)", "/admin/changes_app/changerequest/", "/bench-peer/changes_app/changerequest/"),
    ("entry", "audit entry page", "/admin/audit_app/auditentry/", "/bench-peer/audit_app/auditentry/"),
]
RESULT_MARK = "GOVERNANCE-PAGES-RESULT "

CHANGE_SOURCE = '''\
from changes_app.definitions import Change


class InsertRow{number}(Change):
    """Benchmark change {number}: insert one row."""

    id = "change-{number}"
    author = "bench"
    target = "app-db"

    def apply(self, cursor):
        cursor.execute("INSERT INTO bench_row (n) VALUES (%s)", [{number}])
'''


def changes_write(root: Path, count: int) -> None:
    directory = root / PACKAGE
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    for number in range(1, count + 1):
        (directory / f"{number:05d}_insert_row.py").write_text(CHANGE_SOURCE.format(number=number))


# -- the child process: the data, both admins, the timing loop -------------------------------------


def _data(changes: int) -> dict[str, int]:
    """The catalogue, its state projection, runs and requests; returns the pks of the measured rows."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from audit_app.models import AuditEntry, ChangeState
    from changes_app.models import Approval, ChangeRecord, ChangeRequest, RequestComment, Run, TargetSystem
    from changes_app.pipeline.discovery import pipeline_load
    from changes_app.services.catalogue import catalogue_sync

    started = time.perf_counter()
    pipeline = pipeline_load()
    if not pipeline.valid or len(pipeline.by_id) != changes:
        raise BenchmarkError(f"the generated pipeline has {len(pipeline.by_id)} changes (valid: {pipeline.valid})")
    catalogue_sync(pipeline=pipeline)
    # Any entry of the trail will do for the projection's foreign key (no constraint).
    entry_id = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first()
    now = timezone.now()
    ChangeState.objects.bulk_create(
        [
            ChangeState(
                change_id=change.id,
                state="APPLIED",
                checksum=change.checksum,
                entry_id=entry_id,
                run_id=uuid.UUID(int=1),
                stage=change.stage,
                order=change.order,
                target=change.target,
                applied_count=1,
                updated_at=now,
            )
            for change in pipeline.by_id.values()
        ],
        batch_size=2000,
    )
    users = get_user_model()
    admin_user = users.objects.create_superuser("bench-admin", "bench@example.com", None)
    requester = users.objects.create_user("bench-requester")
    approvers = [users.objects.create_user(f"bench-approver-{n}") for n in range(3)]
    # Runs: one per run of the change's entries in the trail (run_id = seq // 10 + 1), each with its
    # result, and 300 later runs of 50 results each (none of them the change's).
    history = list(AuditEntry.objects.filter(change_id=CHANGE).values_list("run_id", "created_at").distinct())
    runs = [
        Run(
            id=run_id,
            kind="PIPELINE",
            status="SUCCEEDED",
            source="CLI",
            environment="dev",
            actor="svc:worker",
            created_at=created,
            started_at=created,
            finished_at=created,
            results=[{"change_id": CHANGE, "action": "APPLY", "result": "APPLIED", "reason": ""}],
        )
        for run_id, created in history
        if run_id
    ]
    for n in range(300):
        created = now - timedelta(minutes=300 - n)
        rows = [{"change_id": f"change-{5000 + (n * 50 + k) % 5000}", "action": "APPLY", "result": "APPLIED", "reason": ""} for k in range(50)]
        runs.append(
            Run(
                id=uuid.uuid4(),
                kind="PIPELINE",
                status="SUCCEEDED",
                source="CLI",
                environment="dev",
                actor="svc:worker",
                created_at=created,
                started_at=created,
                finished_at=created,
                results=rows,
            )
        )
    Run.objects.bulk_create(runs, batch_size=500)
    target = TargetSystem.objects.get(name="app-db")
    # 2,000 requests over the catalogue, executed; the measured one is the change's, with decisions.
    requests = [
        ChangeRequest(
            kind="APPLY",
            change_id=f"change-{1 + n * 5 % changes}",
            checksum="0" * 64,
            environment="dev",
            target_system=target,
            status="EXECUTED",
            reason=f"bench request {n}",
            requester=requester,
            requester_name="bench-requester",
            required_approvals=2,
            expires_at=now + timedelta(days=7),
            decided_at=now,
            executed_at=now,
        )
        for n in range(2000)
    ]
    ChangeRequest.objects.bulk_create(requests, batch_size=500)
    code = pipeline.by_id[CHANGE]
    measured = ChangeRequest.objects.create(
        kind="REAPPLY",
        change_id=CHANGE,
        checksum=code.checksum,
        environment="dev",
        target_system=target,
        status="EXECUTED",
        reason="re-apply after the incident",
        requester=requester,
        requester_name="bench-requester",
        required_approvals=2,
        expires_at=now + timedelta(days=7),
        decided_at=now,
        executed_at=now,
        run_id=runs[-1].id,
    )
    for n, approver in enumerate(approvers):
        Approval.objects.create(
            request=measured,
            approver=approver,
            approver_name=approver.username,
            requester=requester,
            decision="APPROVE" if n < 2 else "REJECT",
            checksum=code.checksum,
            comment=f"decision {n}",
        )
    for n in range(5):
        RequestComment.objects.create(request=measured, author=approvers[n % 3], author_name=approvers[n % 3].username, body=f"comment {n}")
    with_history = ChangeRecord.objects.get(change_id=CHANGE)
    entry = AuditEntry.objects.filter(change_id=CHANGE).order_by("-id").first()
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("changes_app_changerecord", "audit_app_changestate", "changes_app_run", "changes_app_changerequest"):
            cursor.execute(f"ANALYZE {table}")
    log(
        f"governance-pages: {changes:,} changes catalogued with states, {len(runs)} runs, {len(requests) + 1} requests "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return {"change": with_history.pk, "request": measured.pk, "entry": entry.pk, "user": admin_user.pk, "history": len(history)}


def _child(changes: int, repeat: int, warmup: int, profile_dir: str | None) -> dict[str, Any]:
    import django

    django.setup()
    from django.contrib import admin
    from django.contrib.auth import get_user_model

    from audit_app.models import AuditEntry
    from changes_app.models import ChangeRecord, ChangeRequest

    pks = _data(changes)

    # The peers: plain ModelAdmins, Django's own change pages.
    peer_site = admin.AdminSite(name="bench_peer")
    for model in (ChangeRecord, ChangeRequest, AuditEntry):
        peer_site.register(model, admin.ModelAdmin)
    admin_peer_mount(peer_site, "bench_governance_pages_urls")

    timer = AdminTimer(get_user_model().objects.get(pk=pks["user"]))
    get = timer.get
    urls = {(key, side): f"{prefix}{pks[key]}/change/" for key, _, product, peer in CASES for side, prefix in (("product", product), ("peer", peer))}

    # Untimed: warm-up, each page shows what it should, and what each sends to the database.
    statements, sizes = {}, {}
    for (key, side), url in urls.items():
        for _ in range(max(warmup, 1)):
            get(url)
        runs = []
        for _ in range(3):
            sent, response = timer.statements(url)
            runs.append(sent)
        body = response.content.decode()
        sizes[key, side] = len(body)
        if side == "product":
            expected = {"change": [CHANGE, 'data-event="change.applied"'], "request": ["re-apply after the incident", "decision 1", "comment 4"]}
            missing = [text for text in expected.get(key, []) if text not in body]
            if missing:
                raise BenchmarkError(f"{url}: the page lacks {missing}")
        sent = sorted(runs, key=lambda run: sum(ms for _, ms in run))[1]
        statements[key, side] = statements_summary(sent, statistics.median(sum(ms for _, ms in run) for run in runs))

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
            for _ in range(max(3, repeat // 4)):
                get(urls[key, "product"])
            profiler.disable()
            target = Path(profile_dir) / f"governance-{key}.prof"
            profiler.dump_stats(target)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
            profiles[key] = str(target)
            (Path(profile_dir) / f"governance-{key}.txt").write_text(text.getvalue())

    return {
        "entries": AuditEntry.objects.order_by("-seq").values_list("seq", flat=True).first(),
        "changes": ChangeRecord.objects.count(),
        "history": pks["history"],
        "urls": {f"{key}/{side}": url for (key, side), url in urls.items()},
        "sizes": {f"{key}/{side}": value for (key, side), value in sizes.items()},
        "samples_ms": {f"{key}/{side}": [round(value, 3) for value in values] for (key, side), values in samples.items()},
        "cpu_ms": {f"{key}/{side}": [round(value, 3) for value in values] for (key, side), values in cpu.items()},
        "statements": {f"{key}/{side}": value for (key, side), value in statements.items()},
        "load_average": {"start": [round(value, 2) for value in load_start], "end": [round(value, 2) for value in load_end]},
        "profiles": profiles,
    }


# -- the parent: data, child, report ---------------------------------------------------------------


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ms (p95 {percentile(values, 0.95):,.1f})"


def measure(context: Context, *, entries: int, changes: int, repeat: int, warmup: int, profile_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    from bench.audit_data import audit_database, product_env

    name = audit_database(context, entries=entries)
    root = Path(tempfile.mkdtemp(prefix="flk_bench_governance_"))
    try:
        changes_write(root, changes)
        env = product_env(context, name)
        env.update(
            FLAMINGOCK_STAGES=f"bench={PACKAGE}",
            FLAMINGOCK_DISCOVER_APPS="0",
            FLAMINGOCK_ENVIRONMENT="dev",
            FLAMINGOCK_VAR_DIR=str(root / "var"),
            PYTHONPATH=os.pathsep.join([str(root), str(REPO)]),
        )
        command = [context.python, "-m", "bench.suites.governance_pages", "--child", "--changes", str(changes)]
        command += ["--repeat", str(repeat), "--warmup", str(warmup)]
        if profile_dir:
            command += ["--profile", profile_dir]
        log(f"governance-pages: {entries:,} entries, {changes:,} changes, {repeat} repetitions per page and side")
        completed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        context.pg.database_drop(name)
    if completed.returncode != 0:
        raise BenchmarkError(f"governance-pages child: exit code {completed.returncode}\n{completed.stderr[-4000:]}")
    line = next(line for line in reversed(completed.stdout.splitlines()) if line.startswith(RESULT_MARK))
    child = json.loads(line[len(RESULT_MARK) :])

    cases, goals = [], []
    for key, title, *_ in CASES:
        mine, peer = child["samples_ms"][f"{key}/product"], child["samples_ms"][f"{key}/peer"]
        ratio = statistics.median(mine) / statistics.median(peer)
        cases.append(
            {
                "case": title,
                "product_url": child["urls"][f"{key}/product"],
                "peer_url": child["urls"][f"{key}/peer"],
                "product_ms": summary(mine),
                "peer_ms": summary(peer),
                "product_cpu_ms": summary(child["cpu_ms"][f"{key}/product"]),
                "peer_cpu_ms": summary(child["cpu_ms"][f"{key}/peer"]),
                "ratio_median": ratio,
                "ratio_p95": percentile(mine, 0.95) / percentile(peer, 0.95),
                "product_bytes": child["sizes"][f"{key}/product"],
                "product_statements": child["statements"][f"{key}/product"],
                "peer_statements": child["statements"][f"{key}/peer"],
            }
        )
        goals.append(
            {
                "what": f"admin {title}, {entries:,} entries, {changes:,} changes (server time)",
                "product": _figure(mine),
                "peer": f"stock ModelAdmin {_figure(peer)}",
                "ratio": round(ratio, 3),
                "goal": f"under {GOAL_MS:.0f} ms",
                "met": statistics.median(mine) < GOAL_MS,
            }
        )
    data = {
        "entries": entries,
        "changes": child["changes"],
        "history": child["history"],
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
        f"{data['entries']:,} chained entries and {data['changes']:,} catalogued changes on PostgreSQL (the measured change has "
        f"{data['history']} entries of history); server time of one request (Django's test client in one warmed process), "
        f"{data['repeat']} repetitions per page and side, alternating. Load average {load['start'][0]:.2f} at the start of the timing, "
        f"{load['end'][0]:.2f} at its end. Peer: a stock `ModelAdmin` of the same model, its change page of the same row.",
        "",
        "| page | product | peer | ratio (median) | CPU ms, product / peer | queries, DB ms: product | queries, DB ms: peer |",
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
        lines.append(f"\ncProfile of the product's {key} page: `{target}` (top functions beside it, `.txt`).")
    return "\n".join(lines)


def governance_pages_analysis(context: Context) -> Analysis:
    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        entries = 100_000 if context.quick else 1_000_000
        repeat = 3 if context.quick else max(20, context.repeat)
        return measure(context, entries=entries, changes=10_000, repeat=repeat, warmup=1 if context.quick else 3)

    return Analysis(name="governance-pages", title="Admin change, request and audit entry pages at scale (docs/performance.md)", run=run)


def suite(context: Context) -> Suite:
    return Suite(name="governance-pages", benchmarks=[], analyses=[governance_pages_analysis(context)])


# -- stand-alone -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", metavar="DIR", help="also cProfile the product's requests of each page into DIR")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    options = parser.parse_args()
    if options.child:
        print(RESULT_MARK + json.dumps(_child(options.changes, options.repeat, options.warmup, options.profile)), flush=True)
        return

    fields = {"sizes": [], "repeat": options.repeat, "repeat_large": options.repeat, "warmup": options.warmup, "profile": bool(options.profile)}
    with standalone_context(options.pg, **fields) as context:
        if options.profile:
            Path(options.profile).mkdir(parents=True, exist_ok=True)
        markdown, data = measure(
            context, entries=options.entries, changes=options.changes, repeat=options.repeat, warmup=options.warmup, profile_dir=options.profile
        )
        print(markdown)
        print(json.dumps(data["goals"], indent=2))


if __name__ == "__main__":
    main()
