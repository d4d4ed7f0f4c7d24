"""Issue 21: governed Django migrations against Django's own ``migrate``, in the same run.

The workload is a generated project (bench/django_project.py) whose one app has N migrations in a
chain, each a real schema change (a table, then a column each). The same code runs two ways:

- peer: plain Django (``genproj.settings_peer``, the app alone): ``migrate --plan`` and ``migrate``;
- product: the reference site's settings plus the app, ``FLAMINGOCK_DJANGO_MIGRATIONS = ["benchapp"]``
  (``genproj.settings_governed``): ``flamingock plan`` and ``flamingock run``.

Databases are cloned from templates (not timed): the peer's is empty; the product's has its own
tables (``migrate`` of the product's apps, not of benchapp). "Pending" is every migration
unapplied, "applied" every one applied (by the same tool). Each repetition is a fresh process, and
each apply gets a fresh clone.

Goals (issue 21): ``flamingock plan`` faster than ``migrate --plan`` (ratio below 1); ``flamingock
run`` from empty within 1.15 times ``migrate``, with the overhead per migration in milliseconds.

    python bench/run.py --only django-*
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.django_project import APP, django_project_write
from bench.harness import Analysis, Benchmark, BenchmarkError, Case, Comparison, Context, Suite, log

PRODUCT, PEER = "flamingock", "django"
PLAN_GOAL, APPLY_GOAL = 1.0, 1.15
#: Every app of the governed settings but benchapp, migrated into the product's template (beat first:
#: changes_app's post_migrate needs its tables; audit_app by name, as changes_app needs only part of it).
PRODUCT_APPS = ("django_celery_beat", "audit_app", "changes_app", "guardian", "sessions", "admin")


class Workloads:
    """The generated project per size, and its template and applied databases, made once."""

    def __init__(self, context: Context):
        self.context = context
        self.pg = context.pg
        self._projects: dict[int, Path] = {}
        self._templates: dict[tuple[str, int], str] = {}
        self._applied: dict[tuple[str, int], str] = {}

    def project(self, size: int) -> Path:
        if size not in self._projects:
            self._projects[size] = django_project_write(self.context.workdir / f"django_project_{size}", count=size)
        return self._projects[size]

    def env(self, kind: str, size: int, database: str) -> dict[str, str]:
        env = {**self.context.base_env(), "DATABASE_URL": self.pg.database_url(database)}
        if kind == "product":
            env.update(
                DJANGO_SETTINGS_MODULE="genproj.settings_governed",
                FLAMINGOCK_DISCOVER_APPS="0",
                FLAMINGOCK_ENVIRONMENT="dev",
                FLAMINGOCK_VAR_DIR=str(self.context.workdir / "var"),
                PYTHONPATH=f"{self.project(size)}:{self.context.repo}",
            )
        else:
            env.update(DJANGO_SETTINGS_MODULE="genproj.settings_peer", PYTHONPATH=str(self.project(size)))
        return env

    def command(self, *args: str) -> list[str]:
        return [self.context.python, "manage.py", *args]

    def call(self, kind: str, size: int, database: str, *args: str) -> subprocess.CompletedProcess:
        completed = subprocess.run(
            self.command(*args), env=self.env(kind, size, database), cwd=self.project(size), capture_output=True, text=True, timeout=3600
        )
        if completed.returncode != 0:
            raise BenchmarkError(f"setup failed: manage.py {' '.join(args)} ({kind})\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed

    def template(self, kind: str, size: int) -> str:
        key = (kind, size)
        if key not in self._templates:
            database = self.pg.database_create(f"dj_tpl_{kind}_{size}")
            if kind == "product":
                for app in PRODUCT_APPS:
                    self.call(kind, size, database, "migrate", app, "--no-input", "-v", "0")
                applied_verify(self.pg, database, 0)
            self._templates[key] = database
        return self._templates[key]

    def applied(self, kind: str, size: int) -> str:
        """A clone of the template where the tool itself applied all ``size`` migrations (not timed)."""
        key = (kind, size)
        if key not in self._applied:
            database = self.pg.database_create(f"dj_applied_{kind}_{size}", template=self.template(kind, size))
            self.call(kind, size, database, *(("flamingock", "run") if kind == "product" else ("migrate", "--no-input", "-v", "0")))
            applied_verify(self.pg, database, size, governed=kind == "product")
            self._applied[key] = database
        return self._applied[key]

    def fresh(self, kind: str, size: int) -> dict[str, str]:
        database = self.pg.database_create(f"dj_fresh_{kind}", template=self.template(kind, size))
        return {"DATABASE_URL": self.pg.database_url(database), "BENCH_DATABASE": database}

    def drop(self, overrides: dict[str, str]) -> None:
        if overrides.get("BENCH_DATABASE"):
            self.pg.database_drop(overrides["BENCH_DATABASE"])


def applied_verify(pg, database: str, size: int, *, governed: bool = False) -> None:
    """``size`` migrations of the app recorded and one column each; governed: ``size`` APPLIED states too."""
    recorded = pg.scalar(database, f"SELECT count(*) FROM django_migrations WHERE app = '{APP}'")
    columns = pg.scalar(database, f"SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name LIKE '{APP}_item%'")
    if recorded != size or columns != size:
        raise BenchmarkError(f"{database}: expected {size} recorded migrations and {size} columns, found {recorded} and {columns}")
    if governed and size:
        states = pg.scalar(database, "SELECT count(*) FROM audit_app_changestate WHERE state = 'APPLIED' AND change_id LIKE 'django:%'")
        if states != size:
            raise BenchmarkError(f"{database}: expected {size} APPLIED states of django: changes, found {states}")


def plan_verify(size: int, *, pending: bool, governed: bool):
    def verify(completed: subprocess.CompletedProcess, env: dict[str, str]) -> None:
        text = completed.stdout
        if governed:
            listed = text.count(f"django:{APP}.")
            pending_seen = len([line for line in text.splitlines() if f"django:{APP}." in line and " APPLY " in f" {line} "])
            ok = listed >= size and (pending_seen == size if pending else pending_seen == 0)
        else:
            operations = text.count(f"{APP}.")
            ok = operations == size if pending else "No planned migration operations" in text
        if not ok:
            raise BenchmarkError(f"plan ({'pending' if pending else 'applied'}) did not list what it should:\n{text[:1500]}\n...\n{text[-1500:]}")

    return verify


def plan_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        cwd = work.project(size)
        product_pending, peer_pending = work.template("product", size), work.template("peer", size)
        product_applied, peer_applied = work.applied("product", size), work.applied("peer", size)
        return [
            Case(
                "flamingock plan (pending)",
                PRODUCT,
                work.command("flamingock", "plan"),
                work.env("product", size, product_pending),
                cwd=cwd,
                is_product=True,
                verify=plan_verify(size, pending=True, governed=True),
            ),
            Case(
                "migrate --plan (pending)",
                PEER,
                work.command("migrate", "--plan"),
                work.env("peer", size, peer_pending),
                cwd=cwd,
                verify=plan_verify(size, pending=True, governed=False),
            ),
            Case(
                "flamingock plan (applied)",
                PRODUCT,
                work.command("flamingock", "plan"),
                work.env("product", size, product_applied),
                cwd=cwd,
                is_product=True,
                verify=plan_verify(size, pending=False, governed=True),
            ),
            Case(
                "migrate --plan (applied)",
                PEER,
                work.command("migrate", "--plan"),
                work.env("peer", size, peer_applied),
                cwd=cwd,
                verify=plan_verify(size, pending=False, governed=False),
            ),
        ]

    return Benchmark(
        name="django-plan",
        size=size,
        title=f"Plan of {size:,} Django migrations (governed `flamingock plan` against `migrate --plan`): whole process",
        build=build,
        comparisons=[
            Comparison("flamingock plan (pending)", "migrate --plan (pending)"),
            Comparison("flamingock plan (applied)", "migrate --plan (applied)"),
        ],
        notes=["pending: none of the migrations applied yet; applied: all of them applied, by the same tool."],
    )


def apply_benchmark(work: Workloads, size: int) -> Benchmark:
    def build() -> list[Case]:
        # The applied databases of the plan benchmark ran both once: the generated code is compiled.
        work.applied("product", size)
        work.applied("peer", size)
        cwd = work.project(size)

        def verify(governed: bool):
            return lambda completed, env: applied_verify(work.pg, env["BENCH_DATABASE"], size, governed=governed)

        return [
            Case(
                "flamingock run",
                PRODUCT,
                work.command("flamingock", "run"),
                work.env("product", size, work.template("product", size)),
                cwd=cwd,
                is_product=True,
                prepare=lambda: work.fresh("product", size),
                verify=verify(True),
                cleanup=work.drop,
            ),
            Case(
                "migrate",
                PEER,
                work.command("migrate", "--no-input"),
                work.env("peer", size, work.template("peer", size)),
                cwd=cwd,
                prepare=lambda: work.fresh("peer", size),
                verify=verify(False),
                cleanup=work.drop,
            ),
        ]

    return Benchmark(
        name="django-apply",
        size=size,
        title=f"Apply {size:,} Django migrations from empty (each adds a column): whole process, fresh database each repetition",
        build=build,
        comparisons=[Comparison("flamingock run", "migrate")],
        notes=["The product's template holds its own tables (migrated, not timed); the peer's is empty, as `migrate` creates its own table."],
        warmup=0,
    )


def _median(benchmark: Benchmark, case: str) -> float | None:
    walls = [sample.wall_s for sample in benchmark.case(case).samples] if benchmark.cases else []
    return statistics.median(walls) if walls else None


def _row(what: str, product: float, peer: float, goal: str, met: bool, **extra: Any) -> dict[str, Any]:
    """A row of the report's goals table (bench/report.py): what, product, peer, ratio, goal, met."""
    return {
        "what": what,
        "product": f"{product:.3f} s",
        "peer": f"{peer:.3f} s",
        "ratio": round(product / peer, 3),
        "goal": goal,
        "met": bool(met),
        "product_s": product,
        "peer_s": peer,
        **extra,
    }


def goals_rows(plans: list[Benchmark], applies: list[Benchmark]) -> list[dict[str, Any]]:
    rows = []
    for benchmark in plans:
        for state in ("pending", "applied"):
            product, peer = _median(benchmark, f"flamingock plan ({state})"), _median(benchmark, f"migrate --plan ({state})")
            if product and peer:
                rows.append(
                    _row(
                        f"`flamingock plan` of {benchmark.size:,} Django migrations, {state}",
                        product,
                        peer,
                        f"faster than `migrate --plan` (ratio < {PLAN_GOAL})",
                        product / peer < PLAN_GOAL,
                    )
                )
    for benchmark in applies:
        product, peer = _median(benchmark, "flamingock run"), _median(benchmark, "migrate")
        if product and peer:
            overhead = (product - peer) * 1000 / benchmark.size
            rows.append(
                _row(
                    f"`flamingock run` of {benchmark.size:,} Django migrations from empty ({overhead:+.2f} ms per migration)",
                    product,
                    peer,
                    f"within {APPLY_GOAL}x `migrate`",
                    product / peer <= APPLY_GOAL,
                    overhead_ms_per_migration=round(overhead, 3),
                )
            )
    return rows


def goals_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Issue 21's goals for governed Django migrations (medians of this run; ratio = product / peer).",
        "",
        "| what | product | `migrate` | ratio | goal | met | overhead per migration |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        overhead = f"{row['overhead_ms_per_migration']:+.2f} ms" if "overhead_ms_per_migration" in row else ""
        lines.append(
            f"| {row['what']} | {row['product']} | {row['peer']} | {row['ratio']:.3f} | {row['goal']} | {'yes' if row['met'] else '**no**'} | {overhead} |"
        )
    if not rows:
        lines.append("| (no results: the benchmarks were not selected or failed) | | | | | | |")
    return "\n".join(lines)


def goals_analysis(plans: list[Benchmark], applies: list[Benchmark]) -> Analysis:
    def run(output_dir: Path) -> tuple[str, dict[str, Any]]:
        rows = goals_rows(plans, applies)
        return goals_markdown(rows), {"goals": rows}

    return Analysis(name="django-migrations-goals", title="Goals: governed Django migrations against `migrate` (issue 21)", run=run)


def suite(context: Context) -> Suite:
    work = Workloads(context)
    plans = [plan_benchmark(work, size) for size in context.sizes]
    applies = [apply_benchmark(work, size) for size in context.sizes]
    log(f"django_migrations: sizes {context.sizes}, workdir {context.workdir}")
    return Suite(name="django_migrations", benchmarks=[*plans, *applies], analyses=[goals_analysis(plans, applies)])
