"""API latency with a large audit trail (issue 6, "Measure").

    python bench/api_latency.py                 # 1,000,000 entries, 100 req/s for 20 s, 32 clients for 15 s
    python bench/api_latency.py --entries 100000 --duration 5 --clients-seconds 5   # smoke run

A throwaway PostgreSQL database (``flk_bench_<pid>_...``, dropped at the end) is migrated, then the
entries are appended in one ``INSERT ... SELECT generate_series`` (their hashes are not real: the
list does not verify them) and the chain head is moved past them. The product is served by
``--workers`` processes of Django's threaded WSGI server (the only server in the environment; no
gunicorn), each serving the product's URLs plus one bench-only endpoint: the same audit list with
DRF's default page-number pagination (``COUNT(*)`` and ``OFFSET``). A small thread-based load
generator in this file drives them:

- fixed rate: requests are scheduled at exactly ``--rate`` per second (open loop); latency is
  measured from the scheduled time, so a slow answer delays nothing unseen (no coordinated omission);
- throughput: ``--clients`` concurrent clients in a closed loop, each with a keep-alive session.

Every answer must be a 200 with a body: errors are counted and reported.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOKEN_SCRIPT = """
import django; django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from changes_app.identity import token_create
from changes_app.roles import COMPLIANCE_OFFICER, roles_ensure
from changes_app.services import target_systems_sync
roles_ensure()
target_systems_sync()
user = get_user_model().objects.create_user("bench-compliance")
user.groups.set(Group.objects.filter(name=COMPLIANCE_OFFICER))
print(token_create(user=user, name="bench", created_by="bench")[1])
"""


# -- the server: the product's URLs plus the page-number variant of the audit list ----------------


def __getattr__(name):
    # ROOT_URLCONF of the bench server is this module; its URLs are built only when Django asks.
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.urls import include, path
    from rest_framework.pagination import PageNumberPagination

    from audit_app.api import AuditEntryList

    class PageNumberAuditList(AuditEntryList):
        pagination_class = PageNumberPagination

        def get_queryset(self):
            return super().get_queryset().order_by("-seq")

    return [
        path("bench/audit/entries/", PageNumberAuditList.as_view()),
        path("", include("flamingock_site.urls")),
    ]


def serve(port: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import run

    settings.ROOT_URLCONF = "bench.api_latency"
    run("127.0.0.1", port, WSGIHandler(), threading=True, on_bind=lambda port: print("ready", flush=True), server_cls=_server())


def _server():
    from django.core.servers.basehttp import WSGIServer

    class Server(WSGIServer):
        request_queue_size = 128

    return Server


# -- setup -----------------------------------------------------------------------------------------


def child_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAMINGOCK_", "DJANGO_")) and k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="flamingock_site.settings",
        PYTHONPATH=str(REPO),
        FLAMINGOCK_API_THROTTLE_USER="100000000/min",
        FLAMINGOCK_API_THROTTLE_ANON="100000000/min",
    )
    return env


def entries_insert(connection, count: int) -> float:
    """Append ``count`` entries after the chain head in one statement; seconds taken."""
    started = time.perf_counter()
    head = connection.execute("SELECT seq FROM audit_app_chainhead WHERE id = 1").fetchone()[0]
    connection.execute(
        """
        INSERT INTO audit_app_auditentry (seq, hash_version, prev_hash, entry_hash, event, created_at, environment, change_id,
            stage, "order", target, state, checksum, transaction_strategy, recovery_strategy, run_id, actor, actor_user_id,
            host, pid, fencing_token, duration_ms, reason, error, rollback_error, details)
        SELECT %(head)s + n, 1, repeat('0', 64), md5(n::text) || md5(n::text), 'change.applied',
            now() - make_interval(secs => (%(count)s - n) / 10.0), 'dev', 'bench-' || (n %% 5000), 'main', lpad((n %% 5000)::text, 4, '0'),
            'app-db', 'APPLIED', repeat('c', 64), 'SHARED_TRANSACTION', 'MANUAL_INTERVENTION', NULL, 'bench-writer', NULL,
            'bench-host', 1, NULL, 3.5, '', '', '', '{}'::jsonb
        FROM generate_series(1, %(count)s) AS n
        """,
        {"head": head, "count": count},
    )
    connection.execute(
        "UPDATE audit_app_chainhead SET seq = %(seq)s, entry_id = (SELECT max(id) FROM audit_app_auditentry) WHERE id = 1",
        {"seq": head + count},
    )
    connection.execute("ANALYZE audit_app_auditentry")
    return time.perf_counter() - started


# -- load ------------------------------------------------------------------------------------------


class Load:
    def __init__(self, bases: list[str], token: str):
        import requests

        self.bases = bases
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._local = threading.local()
        self._requests = requests
        self._counter = 0
        self._lock = threading.Lock()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
            session.headers.update(self.headers)
        return session

    def get(self, path: str) -> bool:
        with self._lock:
            self._counter += 1
            base = self.bases[self._counter % len(self.bases)]
        try:
            response = self._session().get(base + path, timeout=15)
            return response.status_code == 200 and len(response.content) > 2
        except self._requests.RequestException:
            return False

    def fixed_rate(self, path: str, rate: float, seconds: float, *, senders: int, grace: float = 15) -> dict:
        """Open loop: request i is due at start + i/rate; latency counts from when it was due, so a
        server that falls behind shows it. At most ``senders`` requests are in flight (each holds a
        database connection in the server); requests still unsent ``grace`` seconds after the last
        one was due are dropped and counted as such."""
        total = int(rate * seconds)
        latencies, errors = [], [0]
        start = time.perf_counter() + 0.2

        def one(due: float):
            ok = self.get(path)
            latencies.append(time.perf_counter() - due)
            if not ok:
                errors[0] += 1

        pool = ThreadPoolExecutor(max_workers=senders)
        futures = []
        for index in range(total):
            due = start + index / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(one, due))
        wait(futures, timeout=grace)
        pool.shutdown(wait=True, cancel_futures=True)
        dropped = sum(1 for future in futures if future.cancelled())
        return {
            "requests": total,
            "answered": len(latencies),
            "dropped": dropped,
            "errors": errors[0],
            "rate": rate,
            "answered_per_second": round(len(latencies) / (time.perf_counter() - start), 1),
            **_quantiles(latencies),
        }

    def closed_loop(self, path: str, clients: int, seconds: float) -> dict:
        latencies, errors = [], [0]
        deadline = time.perf_counter() + seconds

        def client():
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                ok = self.get(path)
                latencies.append(time.perf_counter() - began)
                if not ok:
                    errors[0] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        return {
            "clients": clients,
            "requests": len(latencies),
            "errors": errors[0],
            "throughput": round(len(latencies) / elapsed, 1),
            **_quantiles(latencies),
        }


def _quantiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def cursor_at(seq: int) -> str:
    return base64.b64encode(f"p={seq}".encode()).decode().replace("=", "%3D")


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rates", default="100,25", help="fixed rates in requests a second, comma-separated")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each fixed-rate run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--clients-seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2, help="server processes (one per core)")
    parser.add_argument("--port", type=int, default=18400)
    args = parser.parse_args()

    import psycopg

    from bench.pg import PostgresServer

    server = PostgresServer(args.pg)
    processes: list[subprocess.Popen] = []
    database = server.database_create("api_latency")
    try:
        url = server.database_url(database)
        env = child_env(url)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)
        with psycopg.connect(url, autocommit=True) as connection:
            inserted = entries_insert(connection, args.entries)
            rows = connection.execute("SELECT count(*), max(seq) FROM audit_app_auditentry").fetchone()
        print(f"{rows[0]:,} audit entries (max seq {rows[1]:,}); bulk insert {inserted:.1f} s", flush=True)
        token = subprocess.run([sys.executable, "-c", TOKEN_SCRIPT], cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout.split()[-1]
        for index in range(args.workers):
            process = subprocess.Popen(
                [sys.executable, __file__, "serve", str(args.port + index)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            processes.append(process)
            assert process.stdout.readline().strip() == "ready", "the bench server did not start"
        load = Load([f"http://127.0.0.1:{args.port + index}" for index in range(args.workers)], token)
        load_before = os.getloadavg()
        middle = rows[1] // 2
        endpoints = {
            "audit list, cursor on seq (first page)": "/api/v1/audit/entries/",
            "audit list, page numbers (first page)": "/bench/audit/entries/",
            "audit list, cursor on seq (middle of the trail)": f"/api/v1/audit/entries/?cursor={cursor_at(middle)}",
            "audit list, page numbers (middle of the trail)": f"/bench/audit/entries/?page={rows[0] // 100}",
            "change list": "/api/v1/changes/",
        }
        results = {}
        for name, path in endpoints.items():
            assert load.get(path), f"{name}: {path} did not answer 200"
            for _ in range(20):  # warm-up: connections, caches
                load.get(path)
            rates = [float(rate) for rate in args.rates.split(",")]
            fixed = {str(rate): load.fixed_rate(path, rate, args.duration, senders=args.clients) for rate in rates}
            loaded = load.closed_loop(path, args.clients, args.clients_seconds)
            results[name] = {"path": path, "fixed_rate": fixed, "concurrent": loaded}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        report = {
            "when": datetime.now(UTC).isoformat(),
            "entries": rows[0],
            "bulk_insert_seconds": round(inserted, 1),
            "workers": args.workers,
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "args": vars(args),
            "results": results,
        }
        out = REPO / "bench" / "results" / f"api-latency-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(markdown(report))
        print(f"written to {out}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        server.database_drop(database)


def markdown(report: dict) -> str:
    rates = report["args"]["rates"].split(",")
    head = " | ".join(f"at {float(rate):.0f}/s: p50 / p99 (answered/s, errors, dropped)" for rate in rates)
    lines = [
        f"{report['entries']:,} audit entries, {report['workers']} server processes, {report['cores']} cores, "
        f"load average before {report['load_average_before'][0]:.1f}",
        "",
        f"| endpoint | {head} | {report['args']['clients']} clients: throughput, p50 / p99, errors |",
        "|---|" + "---|" * len(rates) + "---|",
    ]
    for name, result in report["results"].items():
        cells = []
        for rate in rates:
            fixed = result["fixed_rate"][str(float(rate))]
            cells.append(f"{fixed['p50_ms']} / {fixed['p99_ms']} ms ({fixed['answered_per_second']}/s, {fixed['errors']}, {fixed['dropped']})")
        loaded = result["concurrent"]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {loaded['throughput']} req/s, {loaded['p50_ms']} / {loaded['p99_ms']} ms, {loaded['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        main()
