"""Issues 2 and 9: plan and apply N trivial changes on PostgreSQL, against Django, Alembic and a floor.

Product: the audit store on PostgreSQL, every change on the ``app-db`` target (the Django database
that holds the audit trail), so every change takes the shared-transaction strategy. Peers on the
same server: a throwaway Django project with one app of N ``RunPython`` migrations, an Alembic
project of N revisions in a chain, and the framework-free floor (one transaction plus an
audit-shaped row per change, psycopg alone). Every tool gets a fresh database for every apply
repetition, cloned from a template that holds its schema and the ``bench_row`` table (the clone is
not timed). The ``pipeline-goals`` analysis reads the results once they ran and sets them against
the performance goals (docs/performance.md).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.generate import (
    BENCH_TABLE,
    BENCH_TABLE_DDL,
    FLOOR_AUDIT_TABLE,
    alembic_project_write,
    alembic_revision,
    floor_runner_write,
    peer_project_write,
    product_changes_write,
)
from bench.harness import Analysis, Benchmark, BenchmarkError, Case, Comparison, Context, Suite, log

PRODUCT = "flamingock"
PEER = "django"
ALEMBIC = "alembic"
FLOOR = "floor"
STARTUP_CASE = "manage.py flamingock --version (start-up)"


class Workloads:
    """Generated code, template databases and applied databases, made once and shared by benchmarks."""

    def __init__(self, context: Context):
        self.context = context
        self.pg = context.pg
        self._packages: dict[int, tuple[Path, str]] = {}
        self._peers: dict[int, Path] = {}
        self._alembic: dict[int, Path] = {}
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

    def alembic_project(self, size: int) -> Path:
        if size not in self._alembic:
            self._alembic[size] = alembic_project_write(self.context.workdir / f"alembic_{size}", count=size)
        return self._alembic[size]

    def floor_runner(self) -> Path:
        path = self.context.workdir / "floor" / "floor_runner.py"
        return path if path.exists() else floor_runner_write(path.parent)

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

    def alembic_command(self, *args: str) -> list[str]:
        """``alembic ...`` in the project's directory (``-m alembic``: the console script of this interpreter)."""
        return [self.context.python, "-m", "alembic", *args]

    def floor_command(self, size: int) -> list[str]:
        return [self.context.python, str(self.floor_runner()), str(size)]

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

    def alembic_applied(self, size: int) -> str:
        key = ("alembic", size)
        if key not in self._applied:
            database = self.pg.database_create(f"applied_alembic_{size}", template=self.peer_template())
            self._call(self.alembic_command("upgrade", "head"), self.peer_env(database), self.alembic_project(size))
            alembic_applied_verify(self.pg, database, size)
            self._applied[key] = database
        return self._applied[key]

    def floor_applied(self, size: int) -> str:
        key = ("floor", size)
        if key not in self._applied:
            database = self.pg.database_create(f"applied_floor_{size}", template=self.peer_template())
            self._call(self.floor_command(size), self.peer_env(database), self.context.workdir)
            floor_applied_verify(self.pg, database, size)
            self._applied[key] = database
        return self._applied[key]

    def fresh(self, kind: str) -> dict[str, str]:
        """``prepare`` of an apply case: a clone of the template, as environment overrides.

        ``product`` clones the product's migrated schema; every peer (Django, Alembic, the floor)
        starts from the empty database with the bench table and creates its own bookkeeping.
        """
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


def alembic_applied_verify(pg, database: str, size: int) -> None:
    """N rows, and the chain's head recorded (Alembic keeps only the head revision, not one row per revision)."""
    rows = pg.scalar(database, f"SELECT count(*) FROM {BENCH_TABLE}")
    heads = pg.scalar(database, "SELECT string_agg(version_num, ',') FROM alembic_version")
    if rows != size or heads != alembic_revision(size):
        raise BenchmarkError(f"alembic upgrade: expected {size} rows and head {alembic_revision(size)}, found {rows} rows and {heads}")


def floor_applied_verify(pg, database: str, size: int) -> None:
    rows = pg.scalar(database, f"SELECT count(*) FROM {BENCH_TABLE}")
    audited = pg.scalar(database, f"SELECT count(*) FROM {FLOOR_AUDIT_TABLE} WHERE state = 'APPLIED'")
    changes = pg.scalar(database, f"SELECT count(DISTINCT change_id) FROM {FLOOR_AUDIT_TABLE}")
    if rows != size or audited != size or changes != size:
        raise BenchmarkError(
            f"floor: expected {size} rows and one audit row for each of {size} changes, found {rows} rows, {audited} audit rows, {changes} changes"
        )


def alembic_current_verify(size: int):
    def verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
        if f"{alembic_revision(size)} (head)" not in completed.stdout:
            raise BenchmarkError(
                f"alembic current: expected {alembic_revision(size)} (head), got:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
            )

    return verify


def alembic_noop_verify(pg, database: str, size: int):
    def verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
        if "Running upgrade" in completed.stderr:
            raise BenchmarkError(f"alembic upgrade head was expected to be a no-op:\n{completed.stderr[-2000:]}")
        alembic_applied_verify(pg, database, size)

    return verify


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
            # The start-up of `manage.py flamingock ...` as it starts (no django-celery-beat, the collector
            # off until start-up is done: docs/decisions.md): the command's --version exits before it works.
            Case(
                "manage.py flamingock --version (command line)",
                PRODUCT,
                work.product_command("flamingock", "--version"),
                work.product_env(size, product_db),
                is_product=True,
            ),
            Case("manage.py version (peer)", PEER, work.peer_command("version"), work.peer_env(peer_db), cwd=work.peer_project(size)),
        ]

    return Benchmark(
        name="startup",
        size=0,
        title="Process start-up floor: interpreter, then django.setup() of each project (no database, no changes read)",
        build=build,
        comparisons=[
            Comparison("manage.py version", "manage.py version (peer)"),
            Comparison("manage.py flamingock --version (command line)", "manage.py version (peer)"),
        ],
        notes=[
            "The product installs admin, auth, guardian, django-celery-beat, DRF...; the peer project installs one app. "
            "`(command line)` is the start-up of `manage.py flamingock`, which leaves django-celery-beat out and starts with the "
            "garbage collector off until its loading is done (docs/decisions.md)."
        ],
    )


def plan_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        product_db, peer_db, alembic_db = work.product_applied(size), work.peer_applied(size), work.alembic_applied(size)
        product_env, peer_env, peer_dir = work.product_env(size, product_db), work.peer_env(peer_db), work.peer_project(size)
        alembic_env, alembic_dir = work.peer_env(alembic_db), work.alembic_project(size)
        return [
            Case(
                "flamingock plan", PRODUCT, work.product_command("flamingock", "plan"), product_env, is_product=True, verify=plan_output_verify(size)
            ),
            # The product's start-up in the same rounds, as the command line starts (`--version` exits before
            # the command works): plan minus this is its work with N changes applied.
            Case(STARTUP_CASE, PRODUCT, work.product_command("flamingock", "--version"), product_env, is_product=True),
            Case("flamingock validate", PRODUCT, work.product_command("flamingock", "validate"), product_env, is_product=True),
            Case("migrate --check", PEER, work.peer_command("migrate", "--check"), peer_env, cwd=peer_dir),
            Case("migrate (no-op)", PEER, work.peer_command("migrate"), peer_env, cwd=peer_dir, verify=noop_migrate_verify),
            Case("alembic current", ALEMBIC, work.alembic_command("current"), alembic_env, cwd=alembic_dir, verify=alembic_current_verify(size)),
            Case(
                "alembic upgrade head (no-op)",
                ALEMBIC,
                work.alembic_command("upgrade", "head"),
                alembic_env,
                cwd=alembic_dir,
                verify=alembic_noop_verify(work.pg, alembic_db, size),
            ),
        ]

    return Benchmark(
        name="plan-all-applied",
        size=size,
        title=f"Status with {size:,} changes all applied: whole process, fresh each repetition",
        build=build,
        comparisons=[
            Comparison("flamingock plan", "migrate --check"),
            Comparison("flamingock plan", "migrate (no-op)"),
            Comparison("flamingock plan", "alembic current"),
            Comparison("flamingock plan", "alembic upgrade head (no-op)"),
            Comparison("flamingock validate", "migrate --check"),
        ],
        notes=[f"`{STARTUP_CASE}`: the product's start-up, timed in the same rounds, so that plan's growth above it can be told."],
    )


def apply_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        # Warm the generated code (bytecode caches) and make the templates before any timing.
        work.product_applied(size)
        work.peer_applied(size)
        work.alembic_applied(size)
        work.floor_applied(size)
        product_env, peer_env = work.product_env(size, work.product_template()), work.peer_env(work.peer_template())
        alembic_dir = work.alembic_project(size)

        def alembic_verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
            alembic_applied_verify(work.pg, env["BENCH_DATABASE"], size)

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
            Case(
                "alembic upgrade head",
                ALEMBIC,
                work.alembic_command("upgrade", "head"),
                peer_env,
                cwd=alembic_dir,
                prepare=lambda: work.fresh("alembic"),
                verify=alembic_verify,
                cleanup=work.drop,
            ),
            Case(
                "alembic upgrade head (transaction per migration)",
                ALEMBIC,
                work.alembic_command("-x", "transaction_per_migration=1", "upgrade", "head"),
                peer_env,
                cwd=alembic_dir,
                prepare=lambda: work.fresh("alembic"),
                verify=alembic_verify,
                cleanup=work.drop,
            ),
            Case(
                "floor",
                FLOOR,
                work.floor_command(size),
                peer_env,
                cwd=work.context.workdir,
                prepare=lambda: work.fresh("floor"),
                verify=lambda completed, env: floor_applied_verify(work.pg, env["BENCH_DATABASE"], size),
                cleanup=work.drop,
            ),
        ]

    return Benchmark(
        name="apply-from-empty",
        size=size,
        title=f"Apply {size:,} trivial changes from empty: whole process, fresh database each repetition",
        build=build,
        comparisons=[
            Comparison("flamingock run", "migrate"),
            Comparison("flamingock run", "alembic upgrade head"),
            Comparison("flamingock run", "alembic upgrade head (transaction per migration)"),
            Comparison("flamingock run", "floor"),
        ],
        notes=[
            "Alembic's default (as `alembic init` writes env.py) runs the whole upgrade in one transaction; "
            "`-x transaction_per_migration=1` commits each revision, as the product, `migrate` and the floor commit each change.",
            "floor: a bare psycopg loop, per change BEGIN, the same INSERT, an audit-shaped INSERT, COMMIT; no lock, fence, chain or checksum.",
        ],
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


# -- the performance goals (docs/performance.md) ---------------------------------------------------------------------------

#: Issue 9: the product's apply costs less than this per change, marginally, with its guarantees on.
MARGINAL_GOAL_MS = 0.9
#: The sizes the goals name; other sizes are reported as measured (``--sizes``).
GOAL_SIZE = 1000


class Results:
    """Medians of the cases that ran, by benchmark name, size and case name."""

    def __init__(self, benchmarks: list[Benchmark]):
        self.benchmarks = benchmarks

    def wall(self, name: str, size: int, case: str) -> dict[str, float] | None:
        for benchmark in self.benchmarks:
            if benchmark.name == name and benchmark.size == size:
                found = [each for each in benchmark.cases if each.name == case and each.samples]
                return found[0].as_dict(size)["wall_s"] if found else None
        return None

    def median(self, name: str, size: int, case: str) -> float | None:
        wall = self.wall(name, size, case)
        return wall["median"] if wall else None

    def sizes(self, name: str, case: str) -> list[int]:
        """The sizes at which ``case`` of benchmark ``name`` has timed samples."""
        return sorted(
            benchmark.size for benchmark in self.benchmarks if benchmark.name == name and benchmark.size and self.wall(name, benchmark.size, case)
        )


def _timing(wall: dict[str, float] | None) -> str:
    if not wall:
        return "not measured"
    return f"{wall['median'] * 1000:,.0f} ms (p95 {wall['p95'] * 1000:,.0f}, n {wall['n']})"


def _goal(what: str, product: str, peer: str, ratio: float | None, goal: str, met: bool) -> dict[str, Any]:
    return {"what": what, "product": product, "peer": peer, "ratio": None if ratio is None else round(ratio, 3), "goal": goal, "met": bool(met)}


def _faster_rows(results: Results, name: str, size: int, product: str, peers: list[str], what: str) -> list[dict[str, Any]]:
    rows = []
    mine = results.wall(name, size, product)
    for peer in peers:
        theirs = results.wall(name, size, peer)
        ratio = mine["median"] / theirs["median"] if mine and theirs else None
        rows.append(
            _goal(
                f"{what}, {size:,} changes: `{product}` vs `{peer}`",
                _timing(mine),
                _timing(theirs),
                ratio,
                "faster than the peer (ratio < 1), same run",
                ratio is not None and ratio < 1,
            )
        )
    return rows


def _plan_queries(profiles: dict[int, Analysis], size: int) -> int | None:
    analysis = profiles.get(size)
    phases = (analysis.data.get("plan_phases") or {}).get("phases") if analysis and analysis.data else None
    return sum(row["queries"] for row in phases) if phases else None


def _growth_row(results: Results, profiles: dict[int, Analysis]) -> dict[str, Any]:
    """Plan's whole-process growth from the smallest to the largest size, and its SQL statements at each.

    The goal reads "whole process": met when the median grows less than the history does and the
    profile counted the same statements at both sizes (without the profile it is not met). The
    growth above the start-up timed in the same rounds is shown beside it: it tells whether the
    work that depends on the history is itself sub-linear.
    """
    what = "plan, all applied: growth of the whole process with history"
    goal = "sub-linear: grows less than the history does, same number of SQL statements at every size"
    sizes = results.sizes("plan-all-applied", "flamingock plan")
    if len(sizes) < 2:
        return _goal(what, "not measured: needs two sizes (`--full`)", "-", None, goal, False)
    small, large = sizes[0], sizes[-1]
    linear = large / small
    before, after = (results.median("plan-all-applied", size, "flamingock plan") for size in (small, large))
    growth = after / before
    product = f"x{growth:.2f} ({before:.2f} s → {after:.2f} s, {(after - before) * 1000 / (large - small):.3f} ms per applied change)"
    startups = [results.median("plan-all-applied", size, STARTUP_CASE) for size in (small, large)]
    if None not in startups and before - startups[0] > 0.02:
        product += f"; above start-up x{(after - startups[1]) / (before - startups[0]):.2f}"
    queries = {size: _plan_queries(profiles, size) for size in (small, large)}
    counted = None not in queries.values()
    product += f"; {queries[small]} → {queries[large]} SQL statements" if counted else "; SQL statements not counted (profile off)"
    peers = []
    for case in ("migrate --check", "alembic current", "alembic upgrade head (no-op)"):
        first, last = (results.median("plan-all-applied", size, case) for size in (small, large))
        if first and last:
            peers.append(f"{case} x{last / first:.2f}")
    met = growth < linear and counted and queries[small] == queries[large]
    return _goal(f"{what}, {small:,} → {large:,}", product, "; ".join(peers) + f" (linear x{linear:.0f})", None, goal, met)


def _marginal(results: Results, case: str, small: int, large: int) -> float | None:
    first, last = results.median("apply-from-empty", small, case), results.median("apply-from-empty", large, case)
    return (last - first) * 1000 / (large - small) if first and last else None


def _marginal_row(results: Results) -> dict[str, Any]:
    """Marginal ms per change between the smallest and largest size; at one size, a conservative estimate."""
    goal = f"under {MARGINAL_GOAL_MS} ms per change, with audit chain, fencing and checksums on"
    peers = ["floor", "alembic upgrade head", "alembic upgrade head (transaction per migration)", "migrate"]
    sizes = results.sizes("apply-from-empty", "flamingock run")
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        what = f"apply: marginal ms per change, {small:,} → {large:,}"
        values = {case: _marginal(results, case, small, large) for case in ["flamingock run", *peers]}
        labels = {}
    elif sizes:
        # One size: (apply - status of the same tool) / N. The product's run has fixed costs its plan has
        # not (lock, catalogue sync, run records), so this overstates its marginal cost: a "met" holds.
        (size,) = sizes
        what = f"apply: ms per change at {size:,}, estimated as (apply − no-op status) / N (`--full` measures the marginal)"
        status = {
            "flamingock run": "flamingock plan",
            "migrate": "migrate (no-op)",
            "alembic upgrade head": "alembic upgrade head (no-op)",
            "alembic upgrade head (transaction per migration)": "alembic upgrade head (no-op)",
        }
        values = {}
        for case in ["flamingock run", *peers]:
            applied = results.median("apply-from-empty", size, case)
            baseline = results.median("plan-all-applied", size, status[case]) if case in status else 0.0
            values[case] = (applied - baseline) * 1000 / size if applied is not None and baseline is not None else None
        labels = {"floor": "floor (whole process / N)"}
    else:
        return _goal("apply: marginal ms per change", "not measured", "-", None, goal, False)
    mine, floor = values["flamingock run"], values["floor"]
    peer = "; ".join(f"{labels.get(case, case)} {value:.3f} ms" for case, value in values.items() if case != "flamingock run" and value is not None)
    ratio = mine / floor if mine is not None and floor else None
    product = "not measured" if mine is None else f"{mine:.3f} ms"
    return _goal(what + " (ratio: product / floor)", product, peer or "not measured", ratio, goal, mine is not None and mine < MARGINAL_GOAL_MS)


def goals_rows(results: Results, profiles: dict[int, Analysis], sizes: list[int]) -> list[dict[str, Any]]:
    plan_size = GOAL_SIZE if GOAL_SIZE in sizes else sizes[0]
    rows = _faster_rows(
        results,
        "plan-all-applied",
        plan_size,
        "flamingock plan",
        ["migrate --check", "alembic current", "alembic upgrade head (no-op)"],
        "plan, all applied, whole process",
    )
    rows.append(_growth_row(results, profiles))
    for size in sizes:
        rows += _faster_rows(results, "apply-from-empty", size, "flamingock run", ["migrate", "alembic upgrade head"], "apply from empty, PostgreSQL")
    rows.append(_marginal_row(results))
    return rows


def goals_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Issue 9's goals for plan and apply, from the benchmarks above (medians of this run; ratio = product / peer).",
        "",
        "| what | product | peer | ratio | goal | met |",
        "|---|---|---|---:|---|---|",
    ]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {row['what']} | {row['product']} | {row['peer']} | {ratio} | {row['goal']} | {'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines)


def goals_analysis(benchmarks: list[Benchmark], profiles: dict[int, Analysis], sizes: list[int]) -> Analysis:
    """Runs after every benchmark and profile of the run (analyses come after benchmarks, in order)."""

    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        rows = goals_rows(Results(benchmarks), profiles, sizes)
        versions = {name: importlib.metadata.version(name) for name in ("Django", "alembic", "SQLAlchemy", "psycopg")}
        return goals_markdown(rows) + "\n\nPeers' versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()), {
            "goals": rows,
            "versions": versions,
        }

    return Analysis(name="pipeline-goals", title="Goals: plan and apply against the peers (docs/performance.md)", run=run)


def suite(context: Context) -> Suite:
    work = Workloads(context)
    benchmarks = [startup_benchmark(work)]
    for size in context.sizes:
        benchmarks += [plan_benchmark(work, size), apply_benchmark(work, size)]
    # cProfile of a 10,000-change run takes minutes: the smallest size has it, every size has the steps.
    profiles = {size: profile_analysis(work, size, cprofile=size == context.sizes[0]) for size in context.sizes} if context.profile else {}
    analyses = [*profiles.values(), goals_analysis(benchmarks, profiles, context.sizes)]
    log(f"pipeline_scale: sizes {context.sizes}, workdir {context.workdir}")
    return Suite(name="pipeline_scale", benchmarks=benchmarks, analyses=analyses)
