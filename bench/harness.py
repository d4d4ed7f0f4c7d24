"""The benchmark framework: whole-process cases, repeated round-robin, summarised and compared.

A *case* is one command timed as a fresh process (wall time and the child's CPU time). A
*benchmark* groups the cases that answer one question at one size (for example "apply 1,000
changes from empty": the product's ``flamingock run`` and Django's ``migrate``); its repetitions
alternate between the cases so that a slow minute of the machine hurts product and peer alike, and
its *comparisons* name which product case is set against which peer case (ratio of medians,
product / peer). An *analysis* is anything else a suite reports (profiles, query counts).

Suites (``bench/suites/*.py``) build benchmarks and analyses from a :class:`Context`; the runner
(``bench/run.py``) executes them and writes the report (``bench/report.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class BenchmarkError(Exception):
    """A case did not do what it is supposed to measure (non-zero exit, wrong row count...)."""


# -- statistics ------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); the max of few samples."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


# -- cases and benchmarks --------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    exit_code: int


@dataclass
class Case:
    """One command timed as a whole fresh process.

    ``prepare`` runs untimed before each repetition and returns environment overrides (a fresh
    database); ``verify`` runs untimed after it and raises :class:`BenchmarkError` if the command
    did not do its work; ``cleanup`` undoes ``prepare``.
    """

    name: str
    tool: str
    command: list[str]
    env: dict[str, str]
    cwd: Path = REPO
    is_product: bool = False
    prepare: Callable[[], dict[str, str]] | None = None
    verify: Callable[[subprocess.CompletedProcess, dict[str, str]], None] | None = None
    cleanup: Callable[[dict[str, str]], None] | None = None
    timeout: float = 1800
    samples: list[Sample] = field(default_factory=list)
    warmups: list[Sample] = field(default_factory=list)

    def execute(self) -> Sample:
        overrides = self.prepare() if self.prepare else {}
        env = {**self.env, **overrides}
        try:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            completed = subprocess.run(self.command, env=env, cwd=self.cwd, capture_output=True, text=True, timeout=self.timeout)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if completed.returncode != 0:
                raise BenchmarkError(
                    f"{self.name}: exit code {completed.returncode}\n$ {' '.join(self.command)}\n"
                    f"--- stdout (tail)\n{completed.stdout[-3000:]}\n--- stderr (tail)\n{completed.stderr[-3000:]}"
                )
            if self.verify:
                self.verify(completed, env)
        finally:
            if self.cleanup:
                self.cleanup(overrides)
        return Sample(wall_s=wall, cpu_s=cpu, exit_code=completed.returncode)

    def as_dict(self, size: int) -> dict[str, Any]:
        walls = [sample.wall_s for sample in self.samples]
        data = {
            "name": self.name,
            "tool": self.tool,
            "is_product": self.is_product,
            "command": " ".join(self.command),
            "wall_s": summary(walls),
            "cpu_s": summary([sample.cpu_s for sample in self.samples]),
            "samples_wall_s": [round(value, 6) for value in walls],
            "warmups_wall_s": [round(sample.wall_s, 6) for sample in self.warmups],
        }
        if size and walls:
            data["ms_per_change_median"] = statistics.median(walls) * 1000 / size
        return data


@dataclass(frozen=True)
class Comparison:
    """A product case set against a peer case of the same benchmark: ratio = product / peer."""

    product: str
    peer: str


@dataclass
class Benchmark:
    """Cases answering one question at one size. ``build`` does the untimed setup, returns the cases."""

    name: str
    size: int
    title: str
    build: Callable[[], list[Case]]
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repeat: int | None = None
    #: Untimed runs per case before timing; ``None`` takes the run's ``--warmup``.
    warmup: int | None = None
    cases: list[Case] = field(default_factory=list)
    setup_s: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.name}[{self.size}]" if self.size else self.name

    def case(self, name: str) -> Case:
        return next(case for case in self.cases if case.name == name)

    def ratios(self) -> list[dict[str, Any]]:
        rows = []
        for comparison in self.comparisons:
            product, peer = self.case(comparison.product), self.case(comparison.peer)
            p, q = product.as_dict(self.size)["wall_s"], peer.as_dict(self.size)["wall_s"]
            if not p.get("n") or not q.get("n"):
                continue
            p_cpu, q_cpu = product.as_dict(self.size)["cpu_s"], peer.as_dict(self.size)["cpu_s"]
            rows.append(
                {
                    "benchmark": self.name,
                    "size": self.size,
                    "product": product.name,
                    "peer": f"{peer.tool}: {peer.name}",
                    "product_median_s": p["median"],
                    "peer_median_s": q["median"],
                    "ratio_median": p["median"] / q["median"],
                    "ratio_p95": p["p95"] / q["p95"],
                    # CPU seconds of the process: less sensitive than wall time to a machine busy with other work.
                    "ratio_cpu_median": p_cpu["median"] / q_cpu["median"] if q_cpu["median"] else math.nan,
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "title": self.title,
            "notes": self.notes,
            "setup_s": round(self.setup_s, 3),
            "cases": [case.as_dict(self.size) for case in self.cases],
            "ratios": self.ratios(),
        }


@dataclass
class Analysis:
    """A report section that is not a timing table: ``run(output_dir)`` returns (markdown, data)."""

    name: str
    title: str
    run: Callable[[Path], tuple[str, dict[str, Any]]]
    markdown: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass
class Context:
    """What suites are given: options, scratch space, the PostgreSQL server, a cleanup stack."""

    sizes: list[int]
    repeat: int
    repeat_large: int
    warmup: int
    quick: bool
    profile: bool
    workdir: Path
    pg: Any
    cleanups: contextlib.ExitStack
    python: str = sys.executable
    repo: Path = REPO

    def repeat_for(self, size: int) -> int:
        return self.repeat if size <= 2000 else self.repeat_large

    def base_env(self) -> dict[str, str]:
        """The parent's environment without anything that would change what the product does."""
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("FLAMINGOCK_", "DJANGO_")) or name in {"DATABASE_URL", "REDIS_URL", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH"}:
                env.pop(name)
        return env


@contextlib.contextmanager
def standalone_context(pg_url: str, *, prefix: str = "flk-bench-", **options: Any) -> Iterator[Context]:
    """A :class:`Context` for one suite run on its own (``python bench/lock_cycles.py`` and the like):
    the PostgreSQL server of ``pg_url`` and a scratch directory; at the end the cleanups run (the
    throwaway databases are dropped), then the server is let go and the directory removed.
    ``options`` set the Context's fields (default: 1,000 changes, 5 repetitions, no warm-up)."""
    from bench.pg import PostgresServer

    with tempfile.TemporaryDirectory(prefix=prefix) as workdir, contextlib.ExitStack() as cleanups:
        pg = PostgresServer(pg_url)
        cleanups.callback(pg.close)
        fields = {"sizes": [1000], "repeat": 5, "repeat_large": 3, "warmup": 0, "quick": False, "profile": False, **options}
        yield Context(**fields, workdir=Path(workdir), pg=pg, cleanups=cleanups)


@dataclass
class Suite:
    name: str
    benchmarks: list[Benchmark]
    analyses: list[Analysis] = field(default_factory=list)


# -- running ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def benchmark_execute(benchmark: Benchmark, *, repeat: int, warmup: int) -> None:
    """Set up, warm up, then time every case ``repeat`` times, alternating between cases."""
    started = time.perf_counter()
    log(f"{benchmark.key}: setting up")
    benchmark.cases = benchmark.build()
    benchmark.setup_s = time.perf_counter() - started
    for _ in range(warmup if benchmark.warmup is None else min(warmup, benchmark.warmup)):
        for case in benchmark.cases:
            case.warmups.append(case.execute())
    for index in range(repeat):
        for case in benchmark.cases:
            sample = case.execute()
            case.samples.append(sample)
        shown = ", ".join(f"{case.name} {case.samples[-1].wall_s:.3f}s" for case in benchmark.cases)
        log(f"{benchmark.key} {index + 1}/{repeat}: {shown}")


def analysis_execute(analysis: Analysis, output_dir: Path) -> None:
    log(f"analysis {analysis.name}")
    started = time.perf_counter()
    analysis.markdown, analysis.data = analysis.run(output_dir)
    analysis.elapsed_s = time.perf_counter() - started


# -- admin pages timed in a child process (audit-admin, governance-pages, trail-10m) ----------------
#
# These run in a child process after ``django.setup()``; Django is imported only there.


def admin_peer_mount(peer_site: Any, module_name: str) -> None:
    """Serve ``peer_site`` (a plain ``AdminSite`` of stock ModelAdmins) at ``/bench-peer/`` beside the
    product's URLs, through a URL configuration made for this process only."""
    import types

    from django.conf import settings
    from django.urls import clear_url_caches, path

    from flamingock_site import urls as site_urls

    urlconf = types.ModuleType(module_name)
    urlconf.urlpatterns = [path("bench-peer/", peer_site.urls), *site_urls.urlpatterns]
    sys.modules[urlconf.__name__] = urlconf
    settings.ROOT_URLCONF = urlconf.__name__
    clear_url_caches()


class AdminTimer:
    """A logged-in test client: ``get`` times one request (wall ms, this process's CPU ms: Django's
    own work without PostgreSQL's), ``statements`` records what one request sends to the database."""

    def __init__(self, user: Any):
        from django.test import Client

        self.client = Client()
        self.client.force_login(user)

    def get(self, url: str) -> tuple[float, float, Any]:
        started, cpu = time.perf_counter(), time.process_time()
        response = self.client.get(url)
        elapsed, cpu = (time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000
        if response.status_code != 200:
            raise BenchmarkError(f"{url}: HTTP {response.status_code}")
        return elapsed, cpu, response

    def statements(self, url: str) -> tuple[list[tuple[str, float]], Any]:
        """One untimed request: (SQL, ms) of every statement it sent, and its response."""
        from django.db import connection

        sent: list[tuple[str, float]] = []

        def record(execute, sql, params, many, context):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                sent.append((sql, (time.perf_counter() - started) * 1000))

        with connection.execute_wrapper(record):
            *_, response = self.get(url)
        return sent, response


def statements_summary(sent: list[tuple[str, float]], db_ms: float | None = None) -> dict[str, Any]:
    """Count, database ms (``db_ms`` if given, else the sum) and the three slowest statements."""
    return {
        "queries": len(sent),
        "db_ms": round(sum(ms for _, ms in sent) if db_ms is None else db_ms, 2),
        "slowest": [{"ms": round(ms, 2), "sql": sql[:200]} for sql, ms in sorted(sent, key=lambda item: -item[1])[:3]],
    }
