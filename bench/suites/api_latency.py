"""API audit list at 1,000,000 entries (docs/performance.md): latency at a fixed rate and throughput, against
the same list with DRF's default page-number pagination.

The server runs the way production does (docs/operators.md, "Serving the admin and the API"):
gunicorn, ``flamingock_site.wsgi``, persistent database connections. Its settings are the
product's plus the bench's URL configuration (bench/api_settings.py, bench/api_urls.py), which adds
the peer endpoint. A load generator in this process drives it over HTTP/1.1:

- fixed rate (open loop): request i is due at start + i / rate and its latency counts from then, so
  a server that falls behind shows it (no coordinated omission); at most ``CLIENTS`` requests are in
  flight, and requests still unsent ``GRACE_S`` after the last was due are dropped and counted;
- throughput (closed loop): ``CLIENTS`` clients, each sending its next request when the last ends.

Every answer must be a 200 with a JSON page of the expected size, or it counts as an error. The
product's and the peer's phases alternate within each round, and the rounds alternate which goes
first. A child process also profiles one request in-process (Django's test client): CPU time, the
SQL statements, EXPLAIN of the page query, and with ``context.profile`` the functions (cProfile).

    python bench/run.py --only api-latency           # 1,000,000 entries, 5 rounds
    python bench/api_latency.py --quick              # the same alone, 100,000 entries, 1 round
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.audit_data import audit_database, product_env
from bench.harness import REPO, Analysis, BenchmarkError, Context, Suite, log, percentile
from bench.machine import load_average

RATE = 100
CLIENTS = 32
GRACE_S = 5.0
#: Pause between two phases, so that one's last answers and the machine's response to them do not
#: fall into the next one.
SETTLE_S = 2.0
GOAL_P99_MS = 100.0
PAGE_SIZE = 50
PRODUCT_PATH = "/api/v1/audit/entries/"
PEER_PATH = "/bench/audit/entries/"
#: The product's first page for a person who sees the trail through an object permission on the
#: app-db target system (django-guardian), not a global one: measured at the fixed rate only.
SCOPED = "first page, scoped user"
#: In the request profile only: a person whose one target system (feature-flags) has no entry in
#: the trail, so the page query must find its rows by target, not by walking seq (an empty page).
RARE = "first page, scoped user of a target without entries"


@dataclass(frozen=True)
class Options:
    entries: int
    rounds: int
    seconds: float
    closed_seconds: float
    rate: float = RATE
    clients: int = CLIENTS
    #: gunicorn as docs/operators.md runs it: one process per core, 4 threads each (gthread).
    workers: int = 2
    worker_class: str = "gthread"
    threads: int = 4

    @classmethod
    def for_context(cls, context: Context) -> Options:
        if context.quick:
            return cls(entries=100_000, rounds=1, seconds=3, closed_seconds=3)
        return cls(entries=1_000_000, rounds=5, seconds=10, closed_seconds=10)


# -- the server ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(context: Context, database: str) -> dict[str, str]:
    env = product_env(context, database)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.api_settings",
        # The load comes from one user: the product's per-user throttle (6,000/min) would answer 429s.
        FLAMINGOCK_API_THROTTLE_USER="100000000/min",
        FLAMINGOCK_API_THROTTLE_ANON="100000000/min",
        # The scoped users' target systems: app-db, and feature-flags, which has no entry in the trail
        # (the example service's systems exist only in the demo; this one stays disabled: no Redis).
        FLAMINGOCK_TARGETS_JSON=json.dumps(
            {
                "app-db": {"kind": "django", "alias": "default", "description": "The application's own database"},
                "feature-flags": {"kind": "redis", "url_env": "BENCH_FEATURE_FLAGS_REDIS_URL", "enabled": False, "description": "Feature flags"},
            }
        ),
    )
    return env


class Server:
    """gunicorn serving ``flamingock_site.wsgi`` with the bench settings, as a child process."""

    def __init__(self, env: dict[str, str], options: Options, log_path: Path):
        self.port = _free_port()
        self.command = [
            sys.executable, "-m", "gunicorn", "flamingock_site.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(options.workers), "--worker-class", options.worker_class,
            "--threads", str(options.threads), "--backlog", "2048", "--timeout", "60", "--graceful-timeout", "10",
        ]  # fmt: skip
        self._log = log_path.open("w")
        self.process = subprocess.Popen(self.command, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, headers: dict[str, str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"gunicorn exited with {self.process.returncode}: see {self._log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", PRODUCT_PATH, headers=headers)
                status = connection.getresponse().status
                connection.close()
                if status == 200:
                    return
                raise BenchmarkError(f"{PRODUCT_PATH} answered {status} at start-up: see {self._log.name}")
            except OSError:
                time.sleep(0.2)
        raise BenchmarkError(f"gunicorn did not answer within {timeout:.0f} s: see {self._log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # gunicorn: graceful shutdown of its workers
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# -- the load ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one load phase saw: latencies in seconds of the answered requests."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    dropped: int = 0
    scheduled: int = 0
    elapsed_s: float = 0.0
    first_error: str = ""


class Load:
    def __init__(self, port: int, headers: dict[str, str]):
        self.port = port
        self.headers = headers
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Requests sent again on a new connection after the server closed an idle kept-alive one.
        self.resent = 0

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return connection

    def get(self, path: str) -> str:
        """One request; an empty string if it was answered as expected, else what went wrong.

        A kept-alive connection that the server closed while it was idle (gunicorn's keep-alive
        timeout) fails before any answer: the request is sent again once on a new connection, as
        HTTP clients do for a GET (RFC 9112, 9.3.1), and counted in ``resent``."""
        connection = self._connection()
        reused = connection.sock is not None
        try:
            connection.request("GET", path, headers=self.headers)
            response = connection.getresponse()
            body = response.read()
            if response.will_close:
                connection.close()  # a server that closes after each answer; the next request reconnects
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
            connection.close()
            if not reused:
                return f"{type(error).__name__}: {error}"
            with self._lock:
                self.resent += 1
            return self.get(path)
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return f"{type(error).__name__}: {error}"
        if response.status != 200:
            return f"HTTP {response.status}: {body[:200]!r}"
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            return f"not a page: {body[:200]!r}"
        return "" if len(results) == PAGE_SIZE else f"{len(results)} entries instead of {PAGE_SIZE}"

    def _record(self, phase: Phase, problem: str, latency: float, lock: threading.Lock) -> None:
        with lock:
            phase.latencies.append(latency)
            if problem:
                phase.errors += 1
                phase.first_error = phase.first_error or problem

    def fixed_rate(self, path: str, rate: float, seconds: float, *, senders: int) -> Phase:
        phase, lock = Phase(scheduled=int(rate * seconds)), threading.Lock()
        start = time.perf_counter() + 0.1

        def one(due: float) -> None:
            problem = self.get(path)
            self._record(phase, problem, time.perf_counter() - due, lock)

        pool = ThreadPoolExecutor(max_workers=senders)
        futures = []
        for index in range(phase.scheduled):
            due = start + index / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(one, due))
        wait(futures, timeout=max(0.0, start + seconds + GRACE_S - time.perf_counter()))
        pool.shutdown(wait=True, cancel_futures=True)
        phase.dropped = sum(1 for future in futures if future.cancelled())
        phase.elapsed_s = time.perf_counter() - start
        return phase

    def closed_loop(self, path: str, clients: int, seconds: float) -> Phase:
        phase, lock = Phase(), threading.Lock()
        deadline = time.perf_counter() + seconds

        def client() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                problem = self.get(path)
                self._record(phase, problem, time.perf_counter() - began, lock)

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        phase.elapsed_s = time.perf_counter() - started
        phase.scheduled = len(phase.latencies)
        return phase


# -- one round after another ---------------------------------------------------------------------------


def cursor_at(seq: int) -> str:
    """DRF's cursor for "entries before ``seq``" (newest first), as it appears in a ``next`` link."""
    return base64.b64encode(f"p={seq}".encode()).decode().replace("=", "%3D")


def endpoints(last_seq: int) -> dict[str, tuple[str, str]]:
    """name -> (side, path). The middle pages hold the same 50 entries on both sides: the product's
    cursor starts below a seq near the middle of the trail, the peer's page number counts the pages
    above it (the trail's seqs are 1..``last_seq`` without a gap)."""
    above = (last_seq // 2) // PAGE_SIZE * PAGE_SIZE  # entries newer than the middle page
    return {
        "first page": ("product", PRODUCT_PATH),
        "first page (peer)": ("peer", PEER_PATH),
        "middle page": ("product", f"{PRODUCT_PATH}?cursor={cursor_at(last_seq - above + 1)}"),
        "middle page (peer)": ("peer", f"{PEER_PATH}?page={above // PAGE_SIZE + 1}"),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _phase_summary(phases: list[Phase]) -> dict[str, Any]:
    pooled = [latency for phase in phases for latency in phase.latencies]
    per_round_p99 = [percentile(phase.latencies, 0.99) for phase in phases if phase.latencies]
    elapsed = sum(phase.elapsed_s for phase in phases)
    return {
        "rounds": len(phases),
        "scheduled": sum(phase.scheduled for phase in phases),
        "answered": len(pooled),
        "errors": sum(phase.errors for phase in phases),
        "dropped": sum(phase.dropped for phase in phases),
        "first_error": next((phase.first_error for phase in phases if phase.first_error), ""),
        "answered_per_s": round(len(pooled) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": _ms(percentile(pooled, 0.50)) if pooled else None,
        "p95_ms": _ms(percentile(pooled, 0.95)) if pooled else None,
        "p99_ms": _ms(percentile(pooled, 0.99)) if pooled else None,
        "max_ms": _ms(max(pooled)) if pooled else None,
        "p99_ms_per_round_median": _ms(statistics.median(per_round_p99)) if per_round_p99 else None,
        "p99_ms_per_round_p95": _ms(percentile(per_round_p99, 0.95)) if per_round_p99 else None,
        "throughput_per_round": [round(len(phase.latencies) / phase.elapsed_s, 1) for phase in phases if phase.elapsed_s],
    }


def _throughput_summary(phases: list[Phase]) -> dict[str, Any]:
    summary = _phase_summary(phases)
    rates = summary["throughput_per_round"]
    summary["throughput_median"] = round(statistics.median(rates), 1) if rates else 0.0
    summary["throughput_p95"] = round(percentile(rates, 0.95), 1) if rates else 0.0
    # Of a rate, the worse end is the low one: the 5th percentile of the rounds.
    summary["throughput_p5"] = round(percentile(rates, 0.05), 1) if rates else 0.0
    return summary


def measure(load: Load, options: Options, paths: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """``options.rounds`` rounds; in each, every endpoint at the fixed rate, then every endpoint
    with the closed-loop clients, product and peer alternating; odd rounds start with the peer."""
    fixed: dict[str, list[Phase]] = {name: [] for name in paths}
    closed: dict[str, list[Phase]] = {name: [] for name in paths}
    load_averages = [load_average()]
    for number in range(options.rounds):
        names = list(paths)
        if number % 2:
            # product, peer, product, peer -> peer, product, peer, product
            names = [names[index ^ 1] for index in range(len(names))]
        for name in names:
            fixed[name].append(load.fixed_rate(paths[name][1], options.rate, options.seconds, senders=options.clients))
            time.sleep(SETTLE_S)
        for name in names:
            closed[name].append(load.closed_loop(paths[name][1], options.clients, options.closed_seconds))
            time.sleep(SETTLE_S)
        load_averages.append(load_average())
        log(
            f"api-latency round {number + 1}/{options.rounds}: "
            + ", ".join(f"{name} p99 {_ms(percentile(fixed[name][-1].latencies, 0.99)):.0f} ms" for name in paths)
            + f"; load {load_averages[-1][0]:.1f}"
        )
    return {
        "fixed_rate": {name: _phase_summary(phases) for name, phases in fixed.items()},
        "closed_loop": {name: _throughput_summary(phases) for name, phases in closed.items()},
        "load_average": {
            "start": load_averages[0],
            "end": load_averages[-1],
            "max_1min": max(values[0] for values in load_averages),
        },
    }


# -- the profile of one request (a child process) -------------------------------------------------------

TOKENS_SCRIPT = """
import json
import django; django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm
from changes_app.governance.identity import token_create
from changes_app.models import TargetSystem
from changes_app.governance.roles import COMPLIANCE_OFFICER, roles_ensure
from changes_app.services.catalogue import target_systems_sync
roles_ensure()
target_systems_sync()
users = get_user_model().objects
compliance = users.create_user("bench-compliance")
compliance.groups.set(Group.objects.filter(name=COMPLIANCE_OFFICER))
scoped = users.create_user("bench-scoped")
assign_perm("changes_app.operate_targetsystem", scoped, TargetSystem.objects.get(name="app-db"))
rare = users.create_user("bench-rare")
assign_perm("changes_app.operate_targetsystem", rare, TargetSystem.objects.get(name="feature-flags"))
print(json.dumps({"compliance": token_create(user=compliance, name="bench", created_by="bench")[1],
                  "scoped": token_create(user=scoped, name="bench", created_by="bench")[1],
                  "rare": token_create(user=rare, name="bench", created_by="bench")[1]}))
"""


def tokens_create(env: dict[str, str]) -> dict[str, str]:
    completed = subprocess.run([sys.executable, "-c", TOKENS_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BenchmarkError(f"creating the bench users' tokens failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def request_profile(path: str, token: str, *, requests: int) -> dict[str, Any]:
    """One request in this process (``django.setup()`` done by the caller): CPU and wall time per
    request (median of 5 batches), its SQL statements, EXPLAIN ANALYZE of its last (the page)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT="application/json")
    for _ in range(3):  # warm: URL resolution, serializer fields, the token's last use written
        response = client.get(path)
        if response.status_code != 200:
            raise BenchmarkError(f"{path}: {response.status_code} {response.content[:300]!r}")
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        client.get(path)
        one = time.perf_counter() - started
    # Read now: the next request resets the connection's query log.
    statements = [{"sql": query["sql"], "ms": float(query["time"]) * 1000} for query in captured.captured_queries]
    # ``requests`` in all, or about 3 seconds of them for a slow endpoint (the peer's deep pages).
    batch = max(1, min(requests // 5, int(0.6 / max(one, 1e-6))))
    cpu, wall = [], []
    for _ in range(5):
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(batch):
            client.get(path)
        wall.append((time.perf_counter() - started) * 1000 / batch)
        cpu.append((time.process_time() - cpu_started) * 1000 / batch)
    plan = []
    if statements:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {statements[-1]['sql']}")
            plan = [row[0] for row in cursor.fetchall()]
    return {
        "path": path,
        "cpu_ms_median": statistics.median(cpu),
        "cpu_ms_p95": percentile(cpu, 0.95),
        "wall_ms_median": statistics.median(wall),
        "requests": batch * 5,
        "statements": statements,
        "page_query_plan": plan,
    }


def request_cprofile(path: str, token: str, *, requests: int, output: str) -> list[dict[str, Any]]:
    """The functions of ``requests`` requests under cProfile (written to ``output``): top 20 by own
    CPU time (the profiler's own cost inflates it; the proportions are what it is for)."""
    import cProfile
    import pstats

    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT="application/json")
    for _ in range(20):
        client.get(path)
    profiler = cProfile.Profile(time.process_time)  # CPU time: waiting for PostgreSQL is not the cost here
    profiler.enable()
    for _ in range(requests):
        client.get(path)
    profiler.disable()
    profiler.dump_stats(output)
    rows = [
        {"function": function, "where": f"{Path(filename).name}:{line}", "calls_per_request": calls / requests,
         "self_ms": own * 1000 / requests, "cumulative_ms": cumulative * 1000 / requests}
        for (filename, line, function), (_, calls, own, cumulative, _) in pstats.Stats(profiler).stats.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda row: -row["self_ms"])[:20]


def profile_child(
    env: dict[str, str], tokens: dict[str, str], paths: dict[str, str], output_dir: Path, *, requests: int, cprofile: bool
) -> dict[str, Any]:
    output = output_dir / "api-latency-profile.json"
    command = [sys.executable, "-m", "bench.suites.api_latency", "profile", "--output", str(output), "--requests", str(requests)]
    if cprofile:
        command += ["--cprofile", str(output_dir / "api-latency-request.prof")]
    child_env = {**env, "BENCH_API_PATHS": json.dumps(paths), "BENCH_API_TOKENS": json.dumps(tokens)}
    completed = subprocess.run(command, env=child_env, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BenchmarkError(f"the request profile failed:\n{completed.stderr[-3000:]}")
    return json.loads(output.read_text())


# -- the analysis -------------------------------------------------------------------------------------


def run_analysis(context: Context, options: Options, output_dir: Path, *, database: str | None = None) -> tuple[str, dict[str, Any]]:
    """Serve and load the list on a clone of the run's trail of ``options.entries`` entries, or on
    ``database`` (a trail of that size the caller owns)."""
    database = database or audit_database(context, entries=options.entries)
    env = server_env(context, database)
    tokens = tokens_create(env)  # their audit entries (permission.granted...) come after the generated ones
    last_seq = context.pg.scalar(database, "SELECT max(seq) FROM audit_app_auditentry")
    paths = endpoints(last_seq)
    output_dir.mkdir(parents=True, exist_ok=True)
    profile_paths = {**{name: path for name, (_, path) in paths.items()}, SCOPED: PRODUCT_PATH, RARE: PRODUCT_PATH}
    profile = profile_child(env, tokens, profile_paths, output_dir, requests=100 if context.quick else 300, cprofile=context.profile)
    server = Server(env, options, output_dir / "api-latency-gunicorn.log")
    try:
        headers = {"Authorization": f"Bearer {tokens['compliance']}", "Accept": "application/json"}
        server.wait_ready(headers)
        load = Load(server.port, headers)
        warm = ThreadPoolExecutor(max_workers=options.workers * 2)
        for problem in warm.map(load.get, [path for _, path in paths.values()] * 25):  # every worker: imports, URLs, connection
            if problem:
                raise BenchmarkError(f"warm-up: {problem}")
        warm.shutdown()
        results = measure(load, options, paths)
        scoped_load = Load(server.port, {**headers, "Authorization": f"Bearer {tokens['scoped']}"})
        scoped_phases = [
            scoped_load.fixed_rate(PRODUCT_PATH, options.rate, options.seconds, senders=options.clients) for _ in range(min(options.rounds, 2))
        ]
        results["fixed_rate"][SCOPED] = _phase_summary(scoped_phases)
        results["resent"] = load.resent + scoped_load.resent
    finally:
        server.stop()
    data = {
        "entries": options.entries,
        "server": {
            "command": " ".join(server.command[1:]).replace(str(server.port), "PORT"),
            "workers": options.workers,
            "worker_class": options.worker_class,
        },
        "options": dataclasses.asdict(options),
        "cores": os.cpu_count(),
        **results,
        "profile": profile,
    }
    data["goals"] = goals(data)
    return markdown(data), data


def _latency(row: dict[str, Any]) -> str:
    text = f"p99 {row['p99_ms']:.1f} ms (p50 {row['p50_ms']:.1f}, p95 {row['p95_ms']:.1f}; per-round p99 median {row['p99_ms_per_round_median']:.1f}, p95 {row['p99_ms_per_round_p95']:.1f})"
    if row["errors"] or row["dropped"]:
        text += f", {row['errors']} errors, {row['dropped']} of {row['scheduled']} dropped"
    return text


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    fixed, closed, rate = data["fixed_rate"], data["closed_loop"], data["options"]["rate"]
    rows = []
    for page in ("first page", "middle page"):
        product, peer = fixed[page], fixed[f"{page} (peer)"]
        met = product["p99_ms"] is not None and product["p99_ms"] < GOAL_P99_MS and product["errors"] == 0 and product["dropped"] == 0
        rows.append(
            {
                "what": f"API audit list, {data['entries']:,} entries, {page}: {rate:.0f} requests a second",
                "product": _latency(product),
                "peer": "page numbers: " + _latency(peer) if peer["p99_ms"] is not None else "nothing answered",
                "ratio": round(product["p99_ms"] / peer["p99_ms"], 4) if product["p99_ms"] and peer["p99_ms"] else None,
                "goal": f"p99 under {GOAL_P99_MS:.0f} ms at {rate:.0f}/s, no errors",
                "met": met,
            }
        )
    product, peer = closed["first page"], closed["first page (peer)"]
    rows.append(
        {
            "what": f"API audit list, {data['entries']:,} entries, first page: throughput at {data['options']['clients']} clients",
            "product": f"{product['throughput_median']:.1f} req/s (p95 of rounds {product['throughput_p95']:.1f}; p99 {product['p99_ms']:.0f} ms; {product['errors']} errors)",
            "peer": f"{peer['throughput_median']:.1f} req/s (p95 of rounds {peer['throughput_p95']:.1f}; p99 {peer['p99_ms']:.0f} ms; {peer['errors']} errors)",
            "ratio": round(product["throughput_median"] / peer["throughput_median"], 2) if peer["throughput_median"] else None,
            "goal": "reported (ratio: product / peer throughput, above 1 = product faster)",
            "met": product["errors"] == 0,
        }
    )
    return rows


def markdown(data: dict[str, Any]) -> str:
    options, loads = data["options"], data["load_average"]
    lines = [
        f"{data['entries']:,} chained audit entries; server: gunicorn, {options['workers']} {options['worker_class']} workers on {data['cores']} cores,",
        f"persistent database connections; {options['rounds']} rounds, each: every endpoint at {options['rate']:.0f} requests a second for",
        f"{options['seconds']:.0f} s (open loop, at most {options['clients']} in flight, unsent {GRACE_S:.0f} s after the end: dropped), then",
        f"{options['clients']} closed-loop clients for {options['closed_seconds']:.0f} s; product and peer alternate. Load average (1 min) at start",
        f"{loads['start'][0]:.1f}, at most {loads['max_1min']:.1f}, at end {loads['end'][0]:.1f}. Peer: the same view with DRF's `PageNumberPagination`.",
        "",
        f"| endpoint | at {options['rate']:.0f}/s: p50 / p95 / p99 ms | p99 per round: median / p95 | answered/s | errors | dropped |"
        f" {options['clients']} clients: req/s median (p5 of rounds) | p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["fixed_rate"].items():
        loaded = data["closed_loop"].get(name)
        throughput = f"{loaded['throughput_median']:.1f} ({loaded['throughput_p5']:.1f})" if loaded else "-"
        closed_latency = f"{loaded['p50_ms']:.0f} / {loaded['p99_ms']:.0f}" if loaded else "-"
        fixed = f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} / {row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
        per_round = f"{row['p99_ms_per_round_median']:.1f} / {row['p99_ms_per_round_p95']:.1f}" if row["p99_ms"] is not None else "-"
        lines.append(
            f"| {name} | {fixed} | {per_round} | {row['answered_per_s']} | {row['errors']} | {row['dropped']} of {row['scheduled']} | {throughput} | {closed_latency} |"
        )
    if data.get("resent"):
        lines += [
            "",
            f"{data['resent']} requests were sent again on a new connection after the server closed an idle kept-alive one (counted once, latency included).",
        ]
    first_error = next((row["first_error"] for row in [*data["fixed_rate"].values(), *data["closed_loop"].values()] if row["first_error"]), "")
    if first_error:
        lines += ["", f"First error: `{first_error}`"]
    profile = data["profile"]
    lines += [
        "",
        "One request in-process (Django's test client, no HTTP server), median of 5 batches:",
        "",
        "| endpoint | CPU ms | wall ms | SQL statements | page query plan (top) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in profile.items():
        if name == "cprofile_top":
            continue
        plan = "; ".join(line.strip().removeprefix("->  ") for line in row["page_query_plan"] if "Scan" in line or "Count" in line)
        lines.append(f"| {name} | {row['cpu_ms_median']:.2f} | {row['wall_ms_median']:.2f} | {len(row['statements'])} | `{plan}` |")
    if profile.get("cprofile_top"):
        lines += [
            "",
            "cProfile (CPU time) of the first page, top functions by own time per request:",
            "",
            "| function | where | calls/request | self ms |",
            "|---|---|---:|---:|",
        ]
        for row in profile["cprofile_top"][:12]:
            lines.append(f"| `{row['function']}` | `{row['where']}` | {row['calls_per_request']:,.1f} | {row['self_ms']:.3f} |")
    return "\n".join(lines)


def suite(context: Context) -> Suite:
    options = Options.for_context(context)
    return Suite(
        name="api-latency",
        benchmarks=[],
        analyses=[
            Analysis(
                name="api-latency",
                title=f"API audit list at {options.entries:,} entries: latency at {options.rate:.0f} requests a second and throughput, cursor vs page numbers",
                run=lambda output_dir: run_analysis(context, options, output_dir),
            )
        ],
    )


# -- child process entry point ------------------------------------------------------------------------


def _profile_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["profile"])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cprofile")
    args = parser.parse_args(argv)
    import django

    django.setup()
    paths = json.loads(os.environ["BENCH_API_PATHS"])
    tokens = json.loads(os.environ["BENCH_API_TOKENS"])
    who = {SCOPED: "scoped", RARE: "rare"}
    out = {name: request_profile(path, tokens[who.get(name, "compliance")], requests=args.requests) for name, path in paths.items()}
    if args.cprofile:
        out["cprofile_top"] = request_cprofile(next(iter(paths.values())), tokens["compliance"], requests=args.requests, output=args.cprofile)
    args.output.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    _profile_main(sys.argv[1:])
