"""Issue 9: the audit trail's bulk reads at 1,000,000 entries on PostgreSQL (the ``audit-bulk`` analysis).

- **Export**: ``manage.py flamingock audit export --format csv`` (the product: every row, its signed
  trailer, in a fresh process) against ``psql -c "\\copy (SELECT * FROM audit_app_auditentry ORDER
  BY seq) TO FILE CSV HEADER"`` (the peer: the same rows, no trailer, no canonical details). Wall
  time, CPU time and peak resident memory of each process (``os.wait4``), alternating.
- **Verify, whole chain**: ``manage.py flamingock audit verify`` (the product, on every core)
  against a single-threaded recompute over a server-side cursor: a psycopg named cursor reads every
  row in chain order and recomputes ``audit_app.chain.entry_hash`` for it, checking each link (the
  peer, written here: ``peer_verify``), alternating, each in a fresh process.
- **Verify from the last signed checkpoint**: ``manage.py flamingock audit checkpoint`` (untimed),
  then ``manage.py flamingock audit verify --from-checkpoint``, whole process and the verification's
  own time.

Every product process gets the same signing key (``FLAMINGOCK_AUDIT_SIGNING_KEY``). One clone of the
chained trail (``bench/audit_data.py``) serves all three; the product's verifications append their
``audit.verified`` entries to it, so later runs check a slightly longer chain. After the first
export, its trailer is checked untimed (row count, digest of the rows, signature).

    python bench/run.py --only audit-bulk
    python -m bench.suites.audit_bulk [--entries 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO, Analysis, BenchmarkError, Context, Suite, log, percentile, standalone_context, summary
from bench.machine import load_average

NAME = "audit-bulk"
EXPORT_RATIO_GOAL = 3.0
EXPORT_RSS_GOAL_MB = 200.0
VERIFY_GOAL_S = 15.0
CHECKPOINT_GOAL_S = 1.0
TABLE = "audit_app_auditentry"
RESULT_MARK = "AUDIT-BULK-RESULT "


# -- one timed process -----------------------------------------------------------------------------


def timed(command: list[str], env: dict[str, str], *, cwd: Path = REPO, timeout: float = 3600) -> dict[str, Any]:
    """Run ``command`` to its end: wall seconds, CPU seconds and peak resident MB of that process
    alone (``wait4``, not the running maximum over all children), exit code, output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                raise BenchmarkError(f"{' '.join(command)}: no end after {timeout:.0f} s")
            time.sleep(0.005)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024,
            "code": process.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
        }
    if result["code"] != 0:
        raise BenchmarkError(f"{' '.join(command)}: exit code {result['code']}\n{result['stdout'][-2000:]}\n{result['stderr'][-3000:]}")
    return result


# -- the peer of verify ----------------------------------------------------------------------------


def peer_verify(url: str) -> dict[str, Any]:
    """A single-threaded recompute of the whole chain over a server-side cursor: every row in chain
    order, its hash recomputed with ``audit_app.chain.entry_hash``, every link checked."""
    import psycopg

    from audit_app.chain import GENESIS_HASH, ROW_COLUMNS, entry_hash

    columns = ", ".join(f'"{column}"' for column in ROW_COLUMNS)
    previous, expected = GENESIS_HASH, 1
    with psycopg.connect(url) as connection, connection.transaction(), connection.cursor(name="peer_verify") as cursor:
        cursor.itersize = 10_000
        cursor.execute(f"SELECT {columns} FROM {TABLE} WHERE seq IS NOT NULL ORDER BY seq")
        for row in cursor:
            seq, version, prev_hash, stored, created_at = row[1:6]
            fields = dict(zip(ROW_COLUMNS[6:], row[6:], strict=True))  # the hashed fields, then the member
            if seq != expected or prev_hash != previous or entry_hash(seq, prev_hash, created_at, fields, version) != stored:
                return {"ok": False, "checked": expected - 1, "broken_seq": seq}
            previous, expected = stored, expected + 1
    return {"ok": True, "checked": expected - 1, "broken_seq": None}


# -- the untimed check of an export ----------------------------------------------------------------


def export_check(path: str) -> dict[str, Any]:
    """Stream the export once (Django set up): its rows' count and digest against the trailer, and
    the trailer's signature. ``audit verify-export`` reads a whole export into memory, which at a
    million rows is gigabytes; this reads one row at a time."""
    from audit_app.export import COLUMNS, TRAILER_MARK, export_message
    from audit_app.signing import signature_valid

    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - 65536))
        last = handle.read().decode().rstrip("\n").rpartition("\n")[2]
    if not last.startswith(TRAILER_MARK):
        raise BenchmarkError(f"{path}: no trailer")
    trailer = json.loads(last[len(TRAILER_MARK) :])
    digest, count = hashlib.sha256(), 0
    position = COLUMNS.index("entry_hash")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        if next(reader) != list(COLUMNS):
            raise BenchmarkError(f"{path}: not the export's header")
        for row in reader:
            if row[0].startswith(TRAILER_MARK):
                break
            digest.update(row[position].encode())
            count += 1
    checkpoint = trailer["checkpoint"]
    message = export_message(trailer["count"], trailer["rows_digest"], checkpoint["seq"], checkpoint["entry_hash"])
    return {
        "rows": count,
        "count_matches": trailer["count"] == count,
        "digest_matches": trailer["rows_digest"] == digest.hexdigest(),
        "signature_valid": signature_valid(message, trailer["signature"], trailer["public_key"]),
        "checkpoint_seq": checkpoint["seq"],
    }


# -- the measurements ------------------------------------------------------------------------------


def signing_key_new() -> str:
    """A signing key for ``FLAMINGOCK_AUDIT_SIGNING_KEY``: any 32 bytes are an Ed25519 private key."""
    return base64.b64encode(os.urandom(32)).decode()


def _figure(values: list[float], unit: str = "s", digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} (p95 {percentile(values, 0.95):.{digits}f})"


def _child_command(context: Context, *args: str) -> list[str]:
    return [context.python, "-m", "bench.suites.audit_bulk", *args]


def _result(completed: dict[str, Any]) -> dict[str, Any]:
    line = next(line for line in reversed(completed["stdout"].splitlines()) if line.startswith(RESULT_MARK))
    return json.loads(line[len(RESULT_MARK) :])


def measure(
    context: Context, *, entries: int, repeat: int, database: str | None = None, signing_key: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Export and verify on a fresh clone of the run's trail of ``entries`` entries (dropped at the
    end), or on ``database`` (a trail of that size the caller owns and keeps, signed with
    ``signing_key`` by every process that works on it)."""
    from bench.audit_data import audit_database, product_env

    name = database or audit_database(context, entries=entries)
    url = context.pg.database_url(name)
    env = product_env(context, name)
    env.update(
        FLAMINGOCK_AUDIT_SIGNING_KEY=signing_key or signing_key_new(),
        FLAMINGOCK_VAR_DIR=str(context.workdir / "audit-bulk-var"),
        FLAMINGOCK_ENVIRONMENT="bench",
    )
    manage = [context.python, str(REPO / "manage.py"), "flamingock", "audit"]
    workdir = context.workdir / "audit-bulk"
    workdir.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key in ("export", "copy", "verify", "peer_verify", "checkpoint")}
    checks: dict[str, Any] = {}

    log(f"{NAME}: {entries:,} entries, {repeat} repetitions per case; export against psql \\copy")
    for index in range(repeat):
        order = ("export", "copy") if index % 2 == 0 else ("copy", "export")
        for case in order:
            target = workdir / f"{case}.csv"
            if case == "export":
                run = timed([*manage, "export", "--format", "csv", "--output", str(target)], env)
                if not checks:
                    checks["export"] = _result(timed(_child_command(context, "--check-export", str(target)), env))
                    checks["export_mb"] = target.stat().st_size / 1e6
            else:
                copy = f"\\copy (SELECT * FROM {TABLE} ORDER BY seq) TO '{target}' CSV HEADER"
                run = timed(["psql", url, "-X", "-q", "-c", copy], context.base_env())
                checks["copy_mb"] = target.stat().st_size / 1e6
            samples[case].append({key: run[key] for key in ("wall_s", "cpu_s", "rss_mb")})
            target.unlink()
        log(f"{NAME} export {index + 1}/{repeat}: product {samples['export'][-1]['wall_s']:.2f} s, psql {samples['copy'][-1]['wall_s']:.2f} s")
    exported = checks["export"]
    if not (exported["count_matches"] and exported["digest_matches"] and exported["signature_valid"] and exported["rows"] >= entries):
        raise BenchmarkError(f"{NAME}: the product's export does not hold what its trailer says: {exported}")

    log(f"{NAME}: verify the whole chain against a single-threaded recompute over a server-side cursor")
    for index in range(repeat):
        order = ("verify", "peer_verify") if index % 2 == 0 else ("peer_verify", "verify")
        for case in order:
            if case == "verify":
                run = timed([*manage, "verify", "--json"], env)
                report = json.loads(run["stdout"])
                if not report["ok"] or report["entries_checked"] < entries:
                    raise BenchmarkError(f"{NAME}: the product's verification: {report}")
                checks["verify"] = {key: report[key] for key in ("ok", "entries_checked", "head_seq", "duration_ms")}
            else:
                run = timed(_child_command(context, "--peer-verify", url), env)
                report = _result(run)
                if not report["ok"] or report["checked"] < entries:
                    raise BenchmarkError(f"{NAME}: the peer's verification: {report}")
                checks["peer_verify"] = report
            samples[case].append({key: run[key] for key in ("wall_s", "cpu_s", "rss_mb")})
        log(f"{NAME} verify {index + 1}/{repeat}: product {samples['verify'][-1]['wall_s']:.2f} s, peer {samples['peer_verify'][-1]['wall_s']:.2f} s")

    timed([*manage, "checkpoint"], env)
    durations = []
    for _ in range(repeat):
        run = timed([*manage, "verify", "--from-checkpoint", "--json"], env)
        report = json.loads(run["stdout"])
        if not report["ok"] or report["mode"] != "checkpoint" or report["checkpoint_seq"] is None:
            raise BenchmarkError(f"{NAME}: the verification from the checkpoint: {report}")
        samples["checkpoint"].append({key: run[key] for key in ("wall_s", "cpu_s", "rss_mb")})
        durations.append(report["duration_ms"] / 1000)
    checks["checkpoint"] = {key: report[key] for key in ("checkpoint_seq", "head_seq", "entries_checked")}
    if database is None:
        context.pg.database_drop(name)
    data = _data(entries, repeat, samples, durations, checks, load_start, load_average())
    return _markdown(data), data


def _data(entries, repeat, samples, durations, checks, load_start, load_end) -> dict[str, Any]:
    def series(case: str, key: str) -> list[float]:
        return [sample[key] for sample in samples[case]]

    cases = {case: {key: summary(series(case, key)) for key in ("wall_s", "cpu_s", "rss_mb")} for case in samples}
    cases["checkpoint_verification"] = {"wall_s": summary(durations)}
    ratios = {
        "export": statistics.median(series("export", "wall_s")) / statistics.median(series("copy", "wall_s")),
        "export_p95": percentile(series("export", "wall_s"), 0.95) / percentile(series("copy", "wall_s"), 0.95),
        "verify": statistics.median(series("verify", "wall_s")) / statistics.median(series("peer_verify", "wall_s")),
        "verify_p95": percentile(series("verify", "wall_s"), 0.95) / percentile(series("peer_verify", "wall_s"), 0.95),
    }
    export_rss = max(series("export", "rss_mb"))
    verify_wall = statistics.median(series("verify", "wall_s"))
    checkpoint_wall = statistics.median(series("checkpoint", "wall_s"))
    goals = [
        {
            "what": f"audit export, CSV, {entries:,} entries (whole process)",
            "product": f"{_figure(series('export', 'wall_s'))}, peak {export_rss:.0f} MB",
            "peer": f"psql \\copy {_figure(series('copy', 'wall_s'))}",
            "ratio": round(ratios["export"], 3),
            "goal": f"within {EXPORT_RATIO_GOAL:.0f}x, under {EXPORT_RSS_GOAL_MB:.0f} MB",
            "met": ratios["export"] <= EXPORT_RATIO_GOAL and export_rss < EXPORT_RSS_GOAL_MB,
        },
        {
            "what": f"audit verify, whole chain, {entries:,} entries (whole process)",
            "product": _figure(series("verify", "wall_s")),
            "peer": f"single-threaded recompute over a server-side cursor {_figure(series('peer_verify', 'wall_s'))}",
            "ratio": round(ratios["verify"], 3),
            "goal": f"under {VERIFY_GOAL_S:.0f} s on {os.cpu_count()} cores",
            "met": verify_wall < VERIFY_GOAL_S,
        },
        {
            "what": "audit verify from the last signed checkpoint (whole process; the verification itself beside it)",
            "product": f"{_figure(series('checkpoint', 'wall_s'))}; the verification itself {statistics.median(durations) * 1000:.1f} ms",
            "peer": "-",
            "ratio": None,
            "goal": f"under {CHECKPOINT_GOAL_S:.0f} s",
            "met": checkpoint_wall < CHECKPOINT_GOAL_S,
        },
    ]
    return {
        "entries": entries,
        "repeat": repeat,
        "cases": cases,
        "samples": samples,
        "ratios": ratios,
        "checks": checks,
        "goals": goals,
        "load_average": {"start": load_start, "end": load_end},
        "cores": os.cpu_count(),
    }


def _markdown(data: dict[str, Any]) -> str:
    load, cases = data["load_average"], data["cases"]
    rows = [
        ("export CSV: `flamingock audit export`", "export"),
        ("export CSV: `psql \\copy` (peer)", "copy"),
        ("verify whole chain: `flamingock audit verify`", "verify"),
        ("verify whole chain: single-threaded recompute (peer)", "peer_verify"),
        ("verify from the last checkpoint: `flamingock audit verify --from-checkpoint`", "checkpoint"),
    ]
    lines = [
        f"{data['entries']:,} chained entries on PostgreSQL, {data['repeat']} repetitions per case, product and peer alternating, each a "
        f"fresh process on {data['cores']} cores. Load average {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end. "
        f"Files: product {data['checks']['export_mb']:.0f} MB (trailer checked: {data['checks']['export']['rows']:,} rows, digest and "
        f"signature), psql {data['checks']['copy_mb']:.0f} MB.",
        "",
        "| case | wall | CPU of the process | peak RSS |",
        "|---|---|---|---|",
    ]
    for title, key in rows:
        case = cases[key]
        lines.append(
            f"| {title} | {case['wall_s']['median']:.2f} s (p95 {case['wall_s']['p95']:.2f}) | {case['cpu_s']['median']:.2f} s "
            f"| {case['rss_mb']['median']:.0f} MB (max {case['rss_mb']['max']:.0f}) |"
        )
    ratios = data["ratios"]
    lines += [
        "",
        f"Ratios (product / peer, medians): export {ratios['export']:.2f} (p95 {ratios['export_p95']:.2f}), "
        f"verify {ratios['verify']:.2f} (p95 {ratios['verify_p95']:.2f}). The CPU column leaves out the PostgreSQL server's work, "
        "which for the export is most of it on both sides.",
        "",
        "| goal | product | peer | ratio | goal | met |",
        "|---|---|---|---:|---|---|",
    ]
    for row in data["goals"]:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        lines.append(f"| {row['what']} | {row['product']} | {row['peer']} | {ratio} | {row['goal']} | {'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines)


def audit_bulk_analysis(context: Context) -> Analysis:
    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        entries = 100_000 if context.quick else 1_000_000
        repeat = 1 if context.quick else max(5, min(context.repeat, 7))
        return measure(context, entries=entries, repeat=repeat)

    return Analysis(
        name=NAME,
        title="Audit export and verify at 1,000,000 entries against psql \\copy and a single-threaded recompute (docs/performance.md)",
        run=run,
    )


def suite(context: Context) -> Suite:
    return Suite(name=NAME, benchmarks=[], analyses=[audit_bulk_analysis(context)])


# -- stand-alone -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-verify", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--check-export", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    options = parser.parse_args(argv)
    if options.peer_verify:
        print(RESULT_MARK + json.dumps(peer_verify(options.peer_verify)), flush=True)
        return
    if options.check_export:
        import django

        django.setup()
        print(RESULT_MARK + json.dumps(export_check(options.check_export)), flush=True)
        return

    with standalone_context(options.pg, sizes=[], repeat=options.repeat, repeat_large=options.repeat) as context:
        markdown, data = measure(context, entries=options.entries, repeat=options.repeat)
        print(markdown)
        print(json.dumps(data["goals"], indent=2))


if __name__ == "__main__":
    main()
