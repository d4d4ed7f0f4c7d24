"""Where one ``flamingock plan`` or ``flamingock run`` process spends its time.

Run by the pipeline suite in a child process whose environment points the product at a benchmark
pipeline and database (never run it against a database you care about: ``run`` applies changes).

- Without ``--cprofile``: the command's work is replayed step by step in the order the CLI does it
  (``django.setup``, imports, system checks, discovery, connect, plan or run, render), each step
  timed, with every SQL statement and commit counted through Django's ``execute_wrapper``. For
  ``run``, a few engine functions are wrapped (here, in this process only) so that the cost per
  change can be told apart from the fixed cost of a run.
- With ``--cprofile FILE``: the real command line (``execute_from_command_line``) under cProfile;
  the stats go to FILE and the top entries to the JSON output.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import redirect_stderr, redirect_stdout  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TABLE = re.compile(r'(?:\bINTO|\bUPDATE|\bFROM)\s+"?([A-Za-z_][\w]*)"?', re.IGNORECASE)


def statement_kind(sql: str) -> str:
    """``INSERT audit_app_auditentry``, ``SELECT audit_app_changestate FOR UPDATE``, ``SAVEPOINT``..."""
    words = sql.split(None, 2)
    verb = words[0].upper() if words else "?"
    if verb == "RELEASE":
        return "RELEASE SAVEPOINT"
    if verb == "ROLLBACK":
        return "ROLLBACK TO SAVEPOINT" if "SAVEPOINT" in sql.upper() else "ROLLBACK"
    if verb in {"SAVEPOINT", "SET", "BEGIN", "COMMIT"}:
        return verb
    match = TABLE.search(sql)
    kind = f"{verb} {match.group(1)}" if match else verb
    if re.search(r"\bFOR\s+(NO\s+KEY\s+)?UPDATE\b", sql, re.IGNORECASE):
        kind += " FOR UPDATE"
    return kind


class Recorder:
    """Counts statements, commits and time per tag; the tag is the innermost wrapped function."""

    def __init__(self):
        self.stack: list[str] = ["other"]
        self.statements: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        self.commits: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.functions: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    @property
    def tag(self) -> str:
        return self.stack[-1]

    def execute_wrapper(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            entry = self.statements[(self.tag, statement_kind(sql))]
            entry[0] += 1
            entry[1] += time.perf_counter() - started

    def commit_wrapper(self, commit, pgconn=None):
        @functools.wraps(commit)
        def wrapped(*args, **kwargs):
            if pgconn is not None and pgconn.transaction_status == 0:  # IDLE: the writer sent COMMIT already
                return commit(*args, **kwargs)
            started = time.perf_counter()
            try:
                return commit(*args, **kwargs)
            finally:
                entry = self.commits[self.tag]
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        return wrapped

    def wrap(self, owner, name: str, tag: str | None = None) -> bool:
        """Time ``owner.name`` and tag the statements it sends; False if the product has no such function."""
        original = getattr(owner, name, None)
        if original is None:
            return False
        tag = tag or name
        recorder = self

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            recorder.stack.append(tag)
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                recorder.stack.pop()
                entry = recorder.functions[tag]
                entry[0] += 1
                entry[1] += time.perf_counter() - started
                entry[2] += time.process_time() - cpu

        setattr(owner, name, wrapped)
        return True

    def totals(self, tags: set[str] | None = None) -> dict[str, float]:
        statements = [(count, seconds) for (tag, _), (count, seconds) in self.statements.items() if tags is None or tag in tags]
        commits = [(count, seconds) for tag, (count, seconds) in self.commits.items() if tags is None or tag in tags]
        return {
            "queries": sum(count for count, _ in statements),
            "commits": sum(count for count, _ in commits),
            "db_ms": (sum(seconds for _, seconds in statements) + sum(seconds for _, seconds in commits)) * 1000,
        }

    def snapshot(self) -> dict[str, float]:
        return self.totals()


class Phases:
    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.rows: list[dict] = []
        self.mark = T0
        self.cpu = time.process_time()
        self.counts = recorder.snapshot()

    def done(self, name: str, **extra) -> None:
        now = time.perf_counter()
        counts = self.recorder.snapshot()
        self.rows.append(
            {
                "name": name,
                "ms": (now - self.mark) * 1000,
                "cpu_ms": (time.process_time() - self.cpu) * 1000,
                "queries": counts["queries"] - self.counts["queries"],
                "commits": counts["commits"] - self.counts["commits"],
                "db_ms": counts["db_ms"] - self.counts["db_ms"],
                **extra,
            }
        )
        self.mark, self.cpu, self.counts = time.perf_counter(), time.process_time(), self.recorder.snapshot()


def phases_measure(mode: str, size: int) -> dict:
    recorder = Recorder()
    phases = Phases(recorder)
    import django

    django.setup()
    phases.done("django.setup(): settings, app registry, models")

    from changes_app import services
    from changes_app.cli import pipeline as cli_pipeline
    from changes_app.cli.output import Output
    from changes_app.engine import executor as engine
    from changes_app.governance.identity import cli_actor
    from changes_app.management.commands import flamingock as cli
    from changes_app.models import Run
    from changes_app.pipeline import discovery
    from changes_app.services import runs as run_service

    phases.done("import the CLI command and the services it uses")

    discoveries: list[float] = []
    original_discover = discovery.pipeline_discover

    def timed_discover():
        started = time.perf_counter()
        try:
            return original_discover()
        finally:
            discoveries.append((time.perf_counter() - started) * 1000)

    discovery.pipeline_discover = timed_discover

    from django.core import checks
    from django.db import connection

    connection.execute_wrappers.append(recorder.execute_wrapper)
    # What BaseCommand.execute() does before handle(): all checks, the listed tags, or none.
    required = cli.Command.requires_system_checks
    if required:
        tags = None if required == "__all__" else list(required)
        problems = checks.run_checks(tags=tags, include_deployment_checks=False)
        phases.done(
            f"system checks the command requires ({'all' if tags is None else ', '.join(tags)})",
            discoveries_ms=list(discoveries),
            problems=len(problems),
        )
    else:
        phases.done("system checks: none (the command sets requires_system_checks = [])")

    before = len(discoveries)
    pipeline = discovery.pipeline_load()
    how = "again, change modules already imported" if before else "imports every change module"
    phases.done(f"pipeline_load(): discovery, {how}", discoveries_ms=discoveries[before:])
    if len(pipeline) != size:
        raise SystemExit(f"expected {size} changes, discovered {len(pipeline)}: {pipeline.problems[:3]}")

    connection.ensure_connection()
    connection._commit = recorder.commit_wrapper(connection._commit, connection.connection.pgconn if connection.vendor == "postgresql" else None)
    import audit_app.writer_postgresql as writer

    if hasattr(writer, "_send_with_commit"):
        # A shared-transaction change's entry sent with COMMIT: one round trip that is both the
        # statement's wait and the commit's. Its statement also passes the execute wrapper, but only
        # to be queued (pipeline mode); the wait is here, counted as the commit.
        writer._send_with_commit = recorder.commit_wrapper(writer._send_with_commit)
    phases.done("connect to the audit database")

    out = io.StringIO()
    output = Output(out, out, as_json=False)
    result: dict = {"mode": mode, "size": size}
    if mode == "plan":
        plan = services.pipeline_plan()
        phases.done("pipeline_plan(): read the ledger, resolve every change")
        original_plan = services.pipeline_plan
        services.pipeline_plan = lambda **kwargs: plan
        try:
            cli_pipeline.plan(output, {})
        finally:
            services.pipeline_plan = original_plan
        phases.done("render the plan table and write it")
    else:
        wrapped = [
            name
            for owner, name, tag in [
                (run_service, "run_create", None),
                (run_service, "catalogue_sync", None),
                (engine.Executor, "acquire", "Executor.acquire"),
                (engine.Executor, "plan", "Executor.plan"),
                (engine.Executor, "execute_pipeline", "Executor.execute_pipeline"),
                (engine.Executor, "apply", "Executor.apply"),
                (engine.Executor, "release", "Executor.release"),
                (run_service, "_run_finish", None),
            ]
            if recorder.wrap(owner, name, tag)
        ]
        run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
        phases.done("run_start(): the whole run, lock to finish", status=run.status)
        output.run(run)
        phases.done("render the results table and write it")
        if run.status != Run.Status.SUCCEEDED:
            raise SystemExit(f"the run did not succeed: {run.status} {run.status_reason}")
        result["wrapped"] = wrapped
        result["functions"] = {
            name: {"calls": calls, "ms": seconds * 1000, "cpu_ms": cpu * 1000} for name, (calls, seconds, cpu) in recorder.functions.items()
        }
        result["per_change"] = per_change(recorder, size)
    result["phases"] = phases.rows
    result["total_ms"] = (time.perf_counter() - T0) * 1000
    result["statements"] = sorted(
        ({"tag": tag, "kind": kind, "count": count, "db_ms": seconds * 1000} for (tag, kind), (count, seconds) in recorder.statements.items()),
        key=lambda row: (-row["count"], row["kind"]),
    )
    result["commits"] = {tag: {"count": count, "ms": seconds * 1000} for tag, (count, seconds) in recorder.commits.items()}
    return result


def per_change(recorder: Recorder, size: int) -> dict:
    """The cost of one change inside ``Executor.apply`` and around it in the stage loop."""
    applies = recorder.functions.get("Executor.apply", [0, 0.0, 0.0])
    loop = recorder.functions.get("Executor.execute_pipeline", [0, 0.0, 0.0])
    plan = recorder.functions.get("Executor.plan", [0, 0.0, 0.0])
    inside = recorder.totals({"Executor.apply"})
    around = recorder.totals({"Executor.execute_pipeline"})
    apply_ms = applies[1] * 1000
    around_ms = (loop[1] - applies[1] - plan[1]) * 1000
    kinds = sorted(
        (
            {"kind": kind, "per_change": count / size, "db_ms_per_change": seconds * 1000 / size}
            for (tag, kind), (count, seconds) in recorder.statements.items()
            if tag == "Executor.apply"
        ),
        key=lambda row: -row["per_change"],
    )
    around_kinds = sorted(
        (
            {"kind": kind, "per_change": count / size, "db_ms_per_change": seconds * 1000 / size}
            for (tag, kind), (count, seconds) in recorder.statements.items()
            if tag == "Executor.execute_pipeline"
        ),
        key=lambda row: -row["per_change"],
    )
    return {
        "changes": applies[0],
        "apply_ms_per_change": apply_ms / size,
        "apply_db_ms_per_change": inside["db_ms"] / size,
        "apply_python_ms_per_change": (apply_ms - inside["db_ms"]) / size,
        "apply_cpu_ms_per_change": applies[2] * 1000 / size,
        "queries_per_change": inside["queries"] / size,
        "commits_per_change": inside["commits"] / size,
        "statements": kinds,
        "loop_ms_per_change": around_ms / size,
        "loop_db_ms_per_change": around["db_ms"] / size,
        "loop_queries_per_change": around["queries"] / size,
        "loop_statements": around_kinds,
    }


def _where(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    try:
        return str(Path(filename).resolve().relative_to(REPO))
    except ValueError:
        return filename


def cprofile_measure(mode: str, path: Path) -> dict:
    profiler = cProfile.Profile()
    code = 0
    started = time.perf_counter()
    profiler.enable()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            from django.core.management import execute_from_command_line

            execute_from_command_line(["manage.py", "flamingock", mode])
    except SystemExit as exit_:
        code = exit_.code or 0
    profiler.disable()
    wall = time.perf_counter() - started
    profiler.dump_stats(str(path))
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_, calls, self_time, cumulative, _) in stats.items():
        rows.append(
            {
                "function": function,
                "where": f"{_where(filename)}:{line}" if line else _where(filename),
                "product": filename.startswith(str(REPO)) and "/.venv/" not in filename,
                "calls": calls,
                "self_ms": self_time * 1000,
                "cumulative_ms": cumulative * 1000,
            }
        )
    by_self = sorted(rows, key=lambda row: -row["self_ms"])[:20]
    product = sorted((row for row in rows if row["product"]), key=lambda row: -row["cumulative_ms"])[:25]
    return {"mode": mode, "exit_code": code, "wall_ms": wall * 1000, "top_self": by_self, "top_product_cumulative": product, "stats_file": str(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["plan", "run"], required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--cprofile", type=Path, help="profile the real command line and write the stats here")
    parser.add_argument("--output", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    os.environ.setdefault("FLAMINGOCK_CLI", "1")  # what manage.py sets for `flamingock` (settings.FLAMINGOCK_CLI)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    result = cprofile_measure(args.mode, args.cprofile) if args.cprofile else phases_measure(args.mode, args.size)
    args.output.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
