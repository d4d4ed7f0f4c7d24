"""Issue 2: plan and apply N trivial changes on PostgreSQL, against Django's ``migrate`` (RunPython).

Product: the audit store on PostgreSQL, every change on the ``app-db`` target (the Django database
that holds the audit trail), so every change takes the shared-transaction strategy. Peer: a
throwaway Django project with one app of N ``RunPython`` migrations on the same server. Both sides
get a fresh database for every apply repetition, cloned from a template that holds the migrated
schema and the ``bench_row`` table (the clone is not timed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from ..generate import BENCH_TABLE, BENCH_TABLE_DDL, peer_project_write, product_changes_write
from ..harness import Analysis, Benchmark, BenchmarkError, Case, Comparison, Context, Suite, log

PRODUCT = "flamingock"
PEER = "django"


class Workloads:
    """Generated code, template databases and applied databases, made once and shared by benchmarks."""

    def __init__(self, context: Context):
        self.context = context
        self.pg = context.pg
        self._packages: dict[int, tuple[Path, str]] = {}
        self._peers: dict[int, Path] = {}
        self._templates: dict[str, str] = {}
        self._applied: dict[tuple[str, int], str] = {}

    # -- code ----------------------------------------------------------------------------------

    def package(self, size: int) -> tuple[Path, str]:
        if size not in self._packages:
            root = self.context.workdir / f"product_{size}"
            package = f"flk_bench_changes_{size}"
            product_changes_write(root, package=package, count=size)
            self._packages[size] = (root, package)
        return self._packages[size]

    def peer_project(self, size: int) -> Path:
        if size not in self._peers:
            self._peers[size] = peer_project_write(self.context.workdir / f"peer_{size}", count=size)
        return self._peers[size]

    # -- environments and commands ---------------------------------------------------------------

    def product_env(self, size: int, database: str) -> dict[str, str]:
        root, package = self.package(size)
        return {
            **self.context.base_env(),
            "DATABASE_URL": self.pg.database_url(database),
            "FLAMINGOCK_STAGES": f"bench={package}",
            "FLAMINGOCK_DISCOVER_APPS": "0",
            "FLAMINGOCK_ENVIRONMENT": "dev",
            "FLAMINGOCK_VAR_DIR": str(self.context.workdir / "var"),
            "PYTHONPATH": os.pathsep.join([str(root), str(self.context.repo)]),
        }

    def peer_env(self, database: str) -> dict[str, str]:
        return {**self.context.base_env(), "DATABASE_URL": self.pg.database_url(database)}

    def product_command(self, *args: str) -> list[str]:
        return [self.context.python, str(self.context.repo / "manage.py"), *args]

    def peer_command(self, *args: str) -> list[str]:
        return [self.context.python, "manage.py", *args]

    def _call(self, command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600)
        if completed.returncode != 0:
            raise BenchmarkError(f"setup failed: {' '.join(command)}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed

    # -- databases -------------------------------------------------------------------------------

    def product_template(self) -> str:
        """The product's schema (``manage.py migrate``, not timed) and the bench table."""
        if "product" not in self._templates:
            database = self.pg.database_create("tpl_product")
            size = self.context.sizes[0]
            self._call(self.product_command("migrate", "--no-input", "-v", "0"), self.product_env(size, database), self.context.repo)
            self.pg.execute(database, BENCH_TABLE_DDL)
            self._templates["product"] = database
        return self._templates["product"]

    def peer_template(self) -> str:
        """An empty database with the bench table: ``migrate`` creates its own tables."""
        if "peer" not in self._templates:
            database = self.pg.database_create("tpl_peer")
            self.pg.execute(database, BENCH_TABLE_DDL)
            self._templates["peer"] = database
        return self._templates["peer"]

    def product_applied(self, size: int) -> str:
        """A database where ``flamingock run`` (not timed) applied all ``size`` changes."""
        key = ("product", size)
        if key not in self._applied:
            database = self.pg.database_create(f"applied_product_{size}", template=self.product_template())
            self._call(self.product_command("flamingock", "run"), self.product_env(size, database), self.context.repo)
            product_applied_verify(self.pg, database, size)
            self._applied[key] = database
        return self._applied[key]

    def peer_applied(self, size: int) -> str:
        key = ("peer", size)
        if key not in self._applied:
            database = self.pg.database_create(f"applied_peer_{size}", template=self.peer_template())
            self._call(self.peer_command("migrate", "--no-input", "-v", "0"), self.peer_env(database), self.peer_project(size))
            peer_applied_verify(self.pg, database, size)
            self._applied[key] = database
        return self._applied[key]

    def fresh(self, kind: str) -> dict[str, str]:
        """``prepare`` of an apply case: a clone of the template, as environment overrides."""
        template = self.product_template() if kind == "product" else self.peer_template()
        database = self.pg.database_create(f"fresh_{kind}", template=template)
        return {"DATABASE_URL": self.pg.database_url(database), "BENCH_DATABASE": database}

    def drop(self, overrides: dict[str, str]) -> None:
        if overrides.get("BENCH_DATABASE"):
            self.pg.database_drop(overrides["BENCH_DATABASE"])


# -- verification (untimed, after each repetition) -------------------------------------------------


def product_applied_verify(pg, database: str, size: int) -> None:
    rows = pg.scalar(database, f"SELECT count(*) FROM {BENCH_TABLE}")
    applied = pg.scalar(database, "SELECT count(*) FROM audit_app_changestate WHERE state = 'APPLIED'")
    if rows != size or applied != size:
        raise BenchmarkError(f"product apply: expected {size} rows and {size} APPLIED states, found {rows} rows and {applied} states")


def peer_applied_verify(pg, database: str, size: int) -> None:
    rows = pg.scalar(database, f"SELECT count(*) FROM {BENCH_TABLE}")
    recorded = pg.scalar(database, "SELECT count(*) FROM django_migrations WHERE app = 'benchapp'")
    if rows != size or recorded != size:
        raise BenchmarkError(f"peer migrate: expected {size} rows and {size} recorded migrations, found {rows} and {recorded}")


def plan_output_verify(size: int):
    def verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
        lines = completed.stdout.count("\n") + 1
        if lines < size or re.search(r"\bAPPLY\b", completed.stdout):
            raise BenchmarkError(f"plan: expected {size} changes, none pending; got {lines} lines:\n{completed.stdout[:2000]}")

    return verify


def noop_migrate_verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
    if "No migrations to apply" not in completed.stdout:
        raise BenchmarkError(f"migrate was expected to be a no-op:\n{completed.stdout[-2000:]}")


# -- benchmarks ------------------------------------------------------------------------------------


def startup_benchmark(work: Workloads) -> Benchmark:
    size = work.context.sizes[0]

    def build() -> list[Case]:
        product_db, peer_db = work.product_template(), work.peer_template()
        return [
            Case("python -c pass", "python", [work.context.python, "-c", "pass"], work.context.base_env()),
            Case("manage.py version", PRODUCT, work.product_command("version"), work.product_env(size, product_db), is_product=True),
            Case("manage.py version (peer)", PEER, work.peer_command("version"), work.peer_env(peer_db), cwd=work.peer_project(size)),
        ]

    return Benchmark(
        name="startup",
        size=0,
        title="Process start-up floor: interpreter, then django.setup() of each project (no database, no changes read)",
        build=build,
        comparisons=[Comparison("manage.py version", "manage.py version (peer)")],
        notes=["The product installs admin, auth, guardian, django-celery-beat... and imports its Celery app; the peer project installs one app."],
    )


def plan_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        product_db, peer_db = work.product_applied(size), work.peer_applied(size)
        product_env, peer_env, peer_dir = work.product_env(size, product_db), work.peer_env(peer_db), work.peer_project(size)
        return [
            Case(
                "flamingock plan", PRODUCT, work.product_command("flamingock", "plan"), product_env, is_product=True, verify=plan_output_verify(size)
            ),
            Case("flamingock validate", PRODUCT, work.product_command("flamingock", "validate"), product_env, is_product=True),
            Case("migrate --check", PEER, work.peer_command("migrate", "--check"), peer_env, cwd=peer_dir),
            Case("migrate (no-op)", PEER, work.peer_command("migrate"), peer_env, cwd=peer_dir, verify=noop_migrate_verify),
        ]

    return Benchmark(
        name="plan-all-applied",
        size=size,
        title=f"Status with {size:,} changes all applied: whole process, fresh each repetition",
        build=build,
        comparisons=[
            Comparison("flamingock plan", "migrate --check"),
            Comparison("flamingock plan", "migrate (no-op)"),
            Comparison("flamingock validate", "migrate --check"),
        ],
    )


def apply_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        # Warm the generated code (bytecode caches) and make the templates before any timing.
        work.product_applied(size)
        work.peer_applied(size)
        product_env, peer_env = work.product_env(size, work.product_template()), work.peer_env(work.peer_template())
        return [
            Case(
                "flamingock run",
                PRODUCT,
                work.product_command("flamingock", "run"),
                product_env,
                is_product=True,
                prepare=lambda: work.fresh("product"),
                verify=lambda completed, env: product_applied_verify(work.pg, env["BENCH_DATABASE"], size),
                cleanup=work.drop,
            ),
            Case(
                "migrate",
                PEER,
                work.peer_command("migrate", "--no-input"),
                peer_env,
                cwd=work.peer_project(size),
                prepare=lambda: work.fresh("peer"),
                verify=lambda completed, env: peer_applied_verify(work.pg, env["BENCH_DATABASE"], size),
                cleanup=work.drop,
            ),
        ]

    return Benchmark(
        name="apply-from-empty",
        size=size,
        title=f"Apply {size:,} trivial changes from empty: whole process, fresh database each repetition",
        build=build,
        comparisons=[Comparison("flamingock run", "migrate")],
        # build() already ran both once on a fresh clone (the status benchmark's database): that is the warm-up.
        warmup=0,
    )


# -- where the time goes ---------------------------------------------------------------------------


def _profile_child(work: Workloads, size: int, database: str, output_dir: Path, mode: str, *, cprofile: bool) -> dict[str, Any]:
    stem = f"{mode}-{size}" + ("-cprofile" if cprofile else "-phases")
    output = output_dir / f"{stem}.json"
    command = [
        work.context.python,
        str(work.context.repo / "bench" / "profile_product.py"),
        "--mode",
        mode,
        "--size",
        str(size),
        "--output",
        str(output),
    ]
    if cprofile:
        command += ["--cprofile", str(output_dir / f"{stem}.prof")]
    work._call(command, work.product_env(size, database), work.context.repo)
    return json.loads(output.read_text())


def _import_times(work: Workloads, size: int, database: str) -> dict[str, Any]:
    """``python -X importtime manage.py flamingock plan``: self time summed per top-level package."""
    command = [work.context.python, "-X", "importtime", str(work.context.repo / "manage.py"), "flamingock", "plan"]
    completed = work._call(command, work.product_env(size, database), work.context.repo)
    packages: dict[str, float] = {}
    modules = []
    for line in completed.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not match:
            continue
        self_us, cumulative_us, indent, module = int(match[1]), int(match[2]), len(match[3]), match[4]
        top = module.split(".")[0]
        packages[top] = packages.get(top, 0) + self_us / 1000
        if indent <= 1:
            modules.append({"module": module, "cumulative_ms": cumulative_us / 1000})
    total = sum(packages.values())
    return {
        "total_ms": total,
        "packages": sorted(({"package": name, "self_ms": ms} for name, ms in packages.items()), key=lambda row: -row["self_ms"])[:15],
        "top_level_imports": sorted(modules, key=lambda row: -row["cumulative_ms"])[:15],
    }


def profile_analysis(work: Workloads, size: int, *, cprofile: bool) -> Analysis:
    """The steps of one plan and one run; with ``cprofile``, also both under cProfile and the import times."""

    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        applied = work.product_applied(size)
        data: dict[str, Any] = {"size": size}
        data["plan_phases"] = _profile_child(work, size, applied, output_dir, "plan", cprofile=False)
        if cprofile:
            data["plan_cprofile"] = _profile_child(work, size, applied, output_dir, "plan", cprofile=True)
        for key, profiled in (("run_phases", False), ("run_cprofile", True)):
            if profiled and not cprofile:
                continue
            fresh = work.fresh("product")
            try:
                data[key] = _profile_child(work, size, fresh["BENCH_DATABASE"], output_dir, "run", cprofile=profiled)
            finally:
                work.drop(fresh)
        if cprofile:
            data["import_times"] = _import_times(work, size, applied)
        return profile_markdown(data), data

    return Analysis(name=f"profile[{size}]", title=f"Where the product's time goes ({size:,} changes)", run=run)


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def _phase_table(phases: list[dict[str, Any]]) -> list[str]:
    total = sum(row["ms"] for row in phases)
    lines = ["| step | ms | share | CPU ms | SQL statements | commits | in the database, ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in phases:
        name = row["name"]
        if row.get("discoveries_ms"):
            name += f" (pipeline discovery: {', '.join(_ms(ms) + ' ms' for ms in row['discoveries_ms'])})"
        cpu = _ms(row["cpu_ms"]) if "cpu_ms" in row else "-"
        lines.append(f"| {name} | {_ms(row['ms'])} | {row['ms'] / total:.0%} | {cpu} | {row['queries']} | {row['commits']} | {_ms(row['db_ms'])} |")
    lines.append(f"| **total, after interpreter start** | **{_ms(total)}** | | | | | |")
    return lines


def _top_table(rows: list[dict[str, Any]], limit: int) -> list[str]:
    lines = ["| function | where | calls | self ms | cumulative ms |", "|---|---|---:|---:|---:|"]
    for row in rows[:limit]:
        lines.append(f"| `{row['function']}` | `{row['where']}` | {row['calls']:,} | {_ms(row['self_ms'])} | {_ms(row['cumulative_ms'])} |")
    return lines


def profile_markdown(data: dict[str, Any]) -> str:
    size = data["size"]
    plan, run = data["plan_phases"], data["run_phases"]
    pc = run.get("per_change", {})
    out = [
        f"One process each, {size:,} changes, PostgreSQL. Steps replay what the CLI does, in its order, timed without a profiler;",
        "statements and commits are counted with Django's `execute_wrapper` on the audit connection (psycopg also sends a `BEGIN`",
        "round trip before the first statement of each transaction, not counted here). The interpreter's own start is the",
        "`python -c pass` line of the start-up benchmark.",
        "",
        f"#### `flamingock plan`, all {size:,} applied",
        "",
        *_phase_table(plan["phases"]),
        "",
        f"#### `flamingock run`, {size:,} changes from empty",
        "",
        *_phase_table(run["phases"]),
        "",
    ]
    if pc:
        out += [
            "Per change (shared-transaction strategy), inside `Executor.apply`:",
            "",
            "| measure | per change |",
            "|---|---:|",
            f"| wall time, ms | {pc['apply_ms_per_change']:.3f} |",
            f"| of which waiting for PostgreSQL (statements + commit), ms | {pc['apply_db_ms_per_change']:.3f} |",
            f"| of which Python, ms | {pc['apply_python_ms_per_change']:.3f} |",
            f"| CPU time of this process (Python and the client side of psycopg, without waits), ms | {pc.get('apply_cpu_ms_per_change', float('nan')):.3f} |",
            f"| SQL statements (+ 1 BEGIN per commit) | {pc['queries_per_change']:.2f} |",
            f"| commits | {pc['commits_per_change']:.2f} |",
            f"| stage loop around it (progress, lease checks, results), ms | {pc['loop_ms_per_change']:.3f} (SQL {pc['loop_queries_per_change']:.2f}, {pc['loop_db_ms_per_change']:.3f} ms in the database) |",
            "",
            "| statement inside `Executor.apply` | per change | ms per change in the database |",
            "|---|---:|---:|",
            *[f"| `{row['kind']}` | {row['per_change']:.2f} | {row['db_ms_per_change']:.3f} |" for row in pc["statements"]],
            "",
        ]
    functions = run.get("functions", {})
    if functions:
        out += ["Fixed costs of the run (wrapped engine and service functions):", "", "| function | calls | ms | CPU ms |", "|---|---:|---:|---:|"]
        out += [f"| `{name}` | {row['calls']:,} | {_ms(row['ms'])} | {_ms(row.get('cpu_ms', float('nan')))} |" for name, row in functions.items()]
        out.append("")
    out += [
        "SQL statements of the whole run by kind and where they were sent:",
        "",
        "| sent from | statement | count | ms in the database |",
        "|---|---|---:|---:|",
    ]
    out += [f"| `{row['tag']}` | `{row['kind']}` | {row['count']:,} | {_ms(row['db_ms'])} |" for row in run["statements"][:20]]
    out.append("")
    for key, title in (("plan_cprofile", "plan"), ("run_cprofile", "run")):
        profile = data.get(key)
        if profile is None:
            continue
        out += [
            f"#### cProfile of `flamingock {title}` through `execute_from_command_line` ({_ms(profile['wall_ms'])} ms under the profiler)",
            "",
            f"Stats file: `{Path(profile['stats_file']).name}` (open with `python -m pstats` or snakeviz). Product functions by cumulative time:",
            "",
            *_top_table(profile["top_product_cumulative"], 15),
            "",
            "Everything by self time:",
            "",
            *_top_table(profile["top_self"], 15),
            "",
        ]
    imports = data.get("import_times")
    if imports is None:
        out.append("cProfile and import times: see the smallest size.")
        return "\n".join(out)
    out += [
        f"#### Import time of `flamingock plan` (`python -X importtime`, {_ms(imports['total_ms'])} ms in all)",
        "",
        "| package | self ms |",
        "|---|---:|",
        *[f"| `{row['package']}` | {_ms(row['self_ms'])} |" for row in imports["packages"][:12]],
        "",
    ]
    return "\n".join(out)


def suite(context: Context) -> Suite:
    work = Workloads(context)
    benchmarks = [startup_benchmark(work)]
    for size in context.sizes:
        benchmarks += [plan_benchmark(work, size), apply_benchmark(work, size)]
    # cProfile of a 10,000-change run takes minutes: the smallest size has it, every size has the steps.
    analyses = [profile_analysis(work, size, cprofile=size == context.sizes[0]) for size in context.sizes] if context.profile else []
    log(f"pipeline_scale: sizes {context.sizes}, workdir {context.workdir}")
    return Suite(name="pipeline_scale", benchmarks=benchmarks, analyses=analyses)
