"""The audit trail at a million entries on PostgreSQL: verify (whole chain and from the last signed
checkpoint), export (CSV) beside ``psql \\copy`` of the same rows with peak memory, and the admin
changelist (first page, and one change's entries) server time.

    python bench/audit_scale.py [--entries 1000000]

Creates and drops its own database ``flk_audit_<pid>`` on the server of ``--pg``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(code: str, env: dict) -> tuple[float, float, str]:
    """Run ``code`` in a fresh Django process; (wall seconds, peak RSS MB, stdout)."""
    wrapper = (
        "import os, sys, time, resource, django\n"
        "sys.path.insert(0, os.getcwd())\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'flamingock_site.settings')\n"
        "django.setup()\n"
        "started = time.perf_counter()\n" + code + "\n"
        "print('WALL', time.perf_counter() - started)\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    wall = float(next(line.split()[1] for line in out.splitlines() if line.startswith("WALL")))
    rss = float(next(line.split()[1] for line in out.splitlines() if line.startswith("RSS")))
    return wall, rss, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    import psycopg

    name = f"flk_audit_{os.getpid()}"
    admin = psycopg.connect(f"{args.pg}/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": f"{args.pg.replace('postgresql', 'postgres')}/{name}", "PYTHONDONTWRITEBYTECODE": ""}
    env.pop("PYTHONDONTWRITEBYTECODE")
    report = {}
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=REPO, check=True)
        os.environ.update({"DATABASE_URL": env["DATABASE_URL"], "DJANGO_SETTINGS_MODULE": "flamingock_site.settings"})
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from audit_app.chain import GENESIS_HASH, HASHED_FIELDS, canonical_json, entry_hash

        started = time.perf_counter()
        previous, base = GENESIS_HASH, datetime(2026, 1, 1, tzinfo=UTC)
        columns = ["seq", "hash_version", "prev_hash", "entry_hash", "created_at", *HASHED_FIELDS]
        with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://")) as conn:
            with conn.cursor().copy(f"COPY audit_app_auditentry ({', '.join(chr(34) + c + chr(34) for c in columns)}) FROM STDIN") as copy:
                for seq in range(1, args.entries + 1):
                    fields = {name: "" for name in HASHED_FIELDS}
                    fields.update(
                        event="change.applied", environment="prod", change_id=f"change-{seq % 5000}", stage="main", order=f"{seq % 5000:05d}",
                        target="app-db", state="APPLIED", run_id=str(uuid.UUID(int=seq)), actor="svc:worker", actor_user_id=None,
                        host="bench", pid=1, fencing_token=seq, duration_ms=1.25, details={"seq": seq},
                    )  # fmt: skip
                    created = base + timedelta(microseconds=seq * 1000)
                    digest = entry_hash(seq, previous, created, fields)
                    row = [seq, 1, previous, digest, created]
                    row += [canonical_json(fields[n]) if n == "details" else fields[n] for n in HASHED_FIELDS]
                    copy.write_row(row)
                    previous = digest
            conn.execute("UPDATE audit_app_chainhead SET seq = %s, entry_hash = %s WHERE id = 1", [args.entries, previous])
            conn.execute("ANALYZE audit_app_auditentry")
        report["load_s"] = round(time.perf_counter() - started, 1)
        print(f"loaded {args.entries} chained entries in {report['load_s']} s", flush=True)

        wall, rss, out = child("from audit_app.integrity import audit_verify\nr = audit_verify()\nprint('OK', r.ok, r.entries_checked)", env)
        report["verify_full_s"], report["verify_full_rss_mb"] = round(wall, 2), round(rss)
        print(f"audit verify (whole chain): {wall:.2f} s, ok line: {[line for line in out.splitlines() if line.startswith('OK')]}", flush=True)
        child("from audit_app.integrity import checkpoint_write\ncheckpoint_write(reason='bench', force=True)", env)
        wall, _, out = child(
            "from audit_app.integrity import audit_verify\nr = audit_verify(from_checkpoint=True)\nprint('OK', r.ok, r.entries_checked)", env
        )
        report["verify_from_checkpoint_s"] = round(wall, 3)
        print(f"audit verify --from-checkpoint: {wall:.3f} s", flush=True)

        wall, rss, _ = child(
            "from audit_app.export import audit_export, ExportFilters\n"
            "with open('/tmp/flk_bench_export.csv', 'w') as handle:\n"
            "    for line in audit_export(fmt='csv', filters=ExportFilters()):\n"
            "        handle.write(line)",
            env,
        )
        size = os.path.getsize("/tmp/flk_bench_export.csv") / 1e6
        report.update(export_s=round(wall, 2), export_rss_mb=round(rss), export_mb=round(size))
        started = time.perf_counter()
        subprocess.run(
            ["psql", env["DATABASE_URL"], "-qc", "\\copy (SELECT * FROM audit_app_auditentry ORDER BY seq) TO '/tmp/flk_bench_copy.csv' CSV HEADER"],
            check=True,
        )
        report["psql_copy_s"] = round(time.perf_counter() - started, 2)
        print(f"export CSV: {wall:.2f} s, peak RSS {rss:.0f} MB, {size:.0f} MB; psql \\copy: {report['psql_copy_s']} s", flush=True)

        timing = (
            "from django.test import Client\nfrom django.contrib.auth import get_user_model\nimport statistics, time\n"
            "user = get_user_model().objects.create_superuser('bench', 'b@example.com', None)\n"
            "client = Client(); client.force_login(user)\n"
            "for label, url in (('first page', '/admin/audit_app/auditentry/'), ('one change', '/admin/audit_app/auditentry/?q=change-42')):\n"
            "    client.get(url)\n"
            "    times = []\n"
            "    for _ in range(20):\n"
            "        t = time.perf_counter(); response = client.get(url); times.append((time.perf_counter() - t) * 1000)\n"
            "        assert response.status_code == 200\n"
            "    times.sort()\n"
            "    print('ADMIN', label, round(statistics.median(times), 1), round(times[int(len(times) * 0.95) - 1], 1))\n"
        )
        _, _, out = child(timing, env)
        for line in out.splitlines():
            if line.startswith("ADMIN"):
                print(f"admin changelist {line[6:]} (median ms, p95 ms)", flush=True)
    finally:
        for path in ("/tmp/flk_bench_export.csv", "/tmp/flk_bench_copy.csv"):
            Path(path).unlink(missing_ok=True)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(report)


if __name__ == "__main__":
    main()
