"""Crash-test helpers: changes whose every effect is counted on its target, child runs that can be
killed or paused for real, and the ledger states docs/semantics.md §5.5 allows for what the targets show.

Each change records one effect per execution: a row in a table of the audit database (shared
transaction), a row in a table of the external PostgreSQL (marker), or an ``effect`` line in the
journal (non-transactional). Counting them after a crash says exactly what reached each target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from django.db import connection

from audit_app.models import APPLIED_STATES, AuditEntry, ChangeState
from audit_app.models import ChangeStateName as S
from tests.support.targets import Journal

REPO = Path(__file__).resolve().parent.parent.parent

TARGET_OF = {"shared": "app-db", "marker": "ext-pg", "journal": "journal"}


@dataclass(frozen=True)
class Spec:
    """One change of a crash-test pipeline."""

    id: str
    kind: str  # "shared", "marker" or "journal"
    order: str = "0001"
    stage: str = "main"
    #: Seconds the apply spends around its effect, so that a random kill can land inside it.
    delay: float = 0.0
    always_retry: bool = False
    verify: bool = False
    #: The first execution touches this file once its effect is made (still inside the apply and
    #: its transaction), then sleeps ``hold`` seconds: how a test knows when to pause it from outside.
    announce: str = ""
    hold: float = 0.0

    @property
    def file_name(self) -> str:
        return f"{self.order}_{self.id.replace('-', '_')}.py"

    @property
    def transactional(self) -> bool:
        return self.kind != "journal"

    def source(self, table: str = "") -> str:
        """The change module: one counted effect per execution."""
        if self.kind == "journal" and self.always_retry:
            # Safe to repeat, as its author declares: every attempt is logged, the effect made once.
            effect = """
                journal.write(kind="attempt", **attempt)
                if not journal.count(change=context.change_id, kind="effect"):
                    journal.write(kind="effect", **attempt)"""
        elif self.kind == "journal":
            effect = """
                journal.write(kind="effect", **attempt)"""
        else:
            effect = f"""
                cursor.execute("INSERT INTO {table} (change_id, run_id, pid) VALUES (%s, %s, %s)", [attempt["change"], attempt["run"], attempt["pid"]])"""
        verify = """

                def verify(self, journal, context):
                    return journal.count(change=context.change_id, kind="effect") > 0"""
        module = f"""
            import os
            import time

            from changes_app.definitions import Change

            DELAY = {self.delay / 2}
            ANNOUNCE = {self.announce!r}
            HOLD = {self.hold}


            def effect_made():
                # The first execution says so through ANNOUNCE, then holds, still inside its apply.
                if ANNOUNCE and not os.path.exists(ANNOUNCE):
                    open(ANNOUNCE, "w").close()
                    time.sleep(HOLD)
                time.sleep(DELAY)


            class Counted(Change):
                id = "{self.id}"
                author = "crash-tests"
                target = "{TARGET_OF[self.kind]}"
                recovery = "{"ALWAYS_RETRY" if self.always_retry else "MANUAL_INTERVENTION"}"

                def apply(self, {"journal" if self.kind == "journal" else "cursor"}, context):
                    time.sleep(DELAY)
                    attempt = dict(change=context.change_id, run=str(context.run_id), pid=os.getpid()){textwrap.indent(textwrap.dedent(effect), " " * 20)}
                    effect_made(){verify if self.verify else ""}
        """
        return textwrap.dedent(module).lstrip("\n")


class Effects:
    """The effect tables of the two SQL targets and the journal, counted per change."""

    def __init__(self, *, suffix: str, external_dsn: str, journal: Journal):
        self.app_table = f"crash_fx_{suffix}"
        self.ext_table = f"crash_fx_{suffix}"
        self.external_dsn = external_dsn
        self.journal = journal

    def table_for(self, spec: Spec) -> str:
        return {"shared": self.app_table, "marker": self.ext_table}.get(spec.kind, "")

    def create(self) -> None:
        ddl = "CREATE TABLE {} (change_id varchar(200) NOT NULL, run_id varchar(64) NOT NULL, pid integer NOT NULL)"
        with connection.cursor() as cursor:
            cursor.execute(ddl.format(self.app_table))
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            external.execute(ddl.format(self.ext_table))

    def drop(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.app_table}")
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            external.execute(f"DROP TABLE IF EXISTS {self.ext_table}")

    def counts(self) -> Counter:
        """Effects per change id, on whichever target holds them."""
        found: Counter = Counter()
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT change_id, count(*) FROM {self.app_table} GROUP BY change_id")
            found.update(dict(cursor.fetchall()))
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            found.update(dict(external.execute(f"SELECT change_id, count(*) FROM {self.ext_table} GROUP BY change_id").fetchall()))
        found.update(entry["change"] for entry in self.journal.entries() if entry.get("kind") == "effect")
        return found

    def attempts(self, change_id: str) -> int:
        return self.journal.count(change=change_id, kind="attempt")

    def markers(self) -> dict[str, set[int]]:
        """Marker generations committed in the external target, per change."""
        with psycopg.connect(self.external_dsn, autocommit=True) as external:
            exists = external.execute("SELECT to_regclass('flamingock_marker')").fetchone()[0]
            rows = external.execute("SELECT change_id, generation FROM flamingock_marker").fetchall() if exists else []
        found: dict[str, set[int]] = {}
        for change_id, generation in rows:
            found.setdefault(change_id, set()).add(generation)
        return found


# -- the ledger ------------------------------------------------------------------------------------


def latest_states() -> dict[str, ChangeState]:
    return {row.change_id: row for row in ChangeState.objects.all()}


def history(change_id: str) -> list[str]:
    """The change's states, oldest first."""
    return list(AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("id").values_list("state", flat=True))


def latest_entry(change_id: str) -> AuditEntry | None:
    return AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("-id").first()


def ledger_problems(specs: list[Spec], effects: Effects) -> list[str]:
    """Every way the ledger disagrees with the evidence in the targets (docs/semantics.md §1, §4, §5).

    - an effect is never made twice;
    - the projection is the trail's latest entry;
    - the latest state is one the semantics allow for the evidence: a transactional target's effect
      always has an APPLIED entry (shared) or at least a STARTED one settled by its marker;
      an APPLIED change has its effect; a change never run has none;
    - order is never broken: in a stage, every change before the last one touched is applied.
    """
    counts, markers, states = effects.counts(), effects.markers(), latest_states()
    problems = []
    for spec in specs:
        count = counts.get(spec.id, 0)
        row = states.get(spec.id)
        state = row.state if row else None
        latest = latest_entry(spec.id)
        if (latest.state if latest else None) != state:
            problems.append(f"{spec.id}: projection says {state}, the trail's latest entry says {latest.state if latest else None}")
        if count > 1:
            problems.append(f"{spec.id}: effect made {count} times")
        allowed = allowed_counts(spec, state, generation_committed=row is not None and row.applied_count in markers.get(spec.id, set()))
        if count not in allowed:
            problems.append(f"{spec.id} ({spec.kind}): latest state {state} with {count} effect(s); the semantics allow {sorted(allowed)}")
    for stage in sorted({spec.stage for spec in specs}):
        ordered = sorted((spec for spec in specs if spec.stage == stage), key=lambda spec: spec.order)
        last_touched = max((index for index, spec in enumerate(ordered) if spec.id in states), default=0)
        for spec in ordered[:last_touched]:
            if spec.id not in states or states[spec.id].state not in APPLIED_STATES:
                problems.append(f"{spec.id}: {states[spec.id].state if spec.id in states else 'never run'} although a later change of {stage} ran")
    return problems


def allowed_counts(spec: Spec, state: str | None, *, generation_committed: bool) -> set[int]:
    """How many effects a change may have in the target, given its latest state."""
    if state is None:
        return {0}
    if state in APPLIED_STATES:
        return {1}
    if state == S.FAILED and spec.transactional:
        return {0}  # written after the target transaction rolled back
    if spec.kind == "shared":
        return set()  # a shared-transaction change is either absent or APPLIED; nothing else is possible
    if spec.kind == "marker":
        if state == S.STARTED:
            # The marker commits with the effect: it alone tells which side of the commit the crash hit.
            return {1} if generation_committed else {0}
        if state == S.ROLLED_BACK:
            return {0}
        return set()
    if state == S.STARTED:
        return {0, 1}  # the honest "unknown": the journal may or may not hold the effect
    if state == S.MANUAL_MARKED_AS_ROLLED_BACK:
        return {0}
    return set()


# -- child processes -------------------------------------------------------------------------------


class Child:
    """``manage.py`` in a child process, with its output in files so that it never blocks on a pipe."""

    def __init__(self, *args: str, env: dict[str, str], directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.started = time.monotonic()
        self._stdout = open(directory / f"child-{self.started:.6f}.out", "w+", encoding="utf-8")  # noqa: SIM115
        self._stderr = open(directory / f"child-{self.started:.6f}.err", "w+", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), *args], env=env, stdout=self._stdout, stderr=self._stderr, text=True, cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, number)

    def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return self.wait()

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        self._stdout.seek(0)
        return self._stdout.read()

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def json(self) -> dict:
        return json.loads(self.stdout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()
        self._stdout.close()
        self._stderr.close()


def wait_for(predicate, *, timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- a crash lab: one pipeline, its counted effects, and the child runs acting on it ---------------

#: A dead holder's lease expires this fast (seconds); a follow-up run waits above it, so it takes over.
LEASE = 1.5
WAIT = 10


class Lab:
    """What a crash test needs: the pipeline on disk, its effects, and killable child runs."""

    def __init__(self, *, make_pipeline, subprocess_env, effects: Effects, directory: Path, unique: str):
        self.make_pipeline = make_pipeline
        self.subprocess_env = subprocess_env
        self.effects = effects
        self.directory = directory
        self.unique = unique
        self.specs: list[Spec] = []
        self.children: list[Child] = []

    def pipeline(self, specs: list[Spec]) -> None:
        self.specs = list(specs)
        stages: dict[str, dict[str, str]] = {}
        for spec in specs:
            stages.setdefault(spec.stage, {})[spec.file_name] = spec.source(self.effects.table_for(spec))
        self.make_pipeline(stages)

    def spawn(self, *args: str, crash_at: str = "", **env) -> Child:
        settings = {"FLAMINGOCK_LOCK_LEASE": LEASE, "FLAMINGOCK_LOCK_WAIT": WAIT, **env}
        if crash_at:
            settings["FLAMINGOCK_CRASH_AT"] = crash_at
        child = Child(*args, env=self.subprocess_env(**settings), directory=self.directory / "children")
        self.children.append(child)
        return child

    def run(self, *, crash_at: str = "", timeout: float = 60) -> Child:
        """``flamingock run --json`` in a child, to its end (or its crash)."""
        child = self.spawn("flamingock", "run", "--json", crash_at=crash_at)
        child.wait(timeout=timeout)
        return child

    def cli(self, *args: str, timeout: float = 60) -> Child:
        child = self.spawn("flamingock", *args)
        child.wait(timeout=timeout)
        return child

    def problems(self) -> list[str]:
        return ledger_problems(self.specs, self.effects)

    def operator_fixes(self, run: Child) -> list[str]:
        """What an operator does after a run reported BLOCKED: for each change left to a human, look
        at the target (a row, a journal line) and record with ``fix`` whether the effect is there."""
        from changes_app import services
        from changes_app.pipeline.plan import Action

        issues = [item.change.id for item in services.pipeline_plan().issues]
        # A verify probe that could not prove the effect leaves the change to a human too: Issues
        # lists it (docs/semantics.md, Issues); the run's results must say the same.
        blocked = [r["change_id"] for r in run.json()["results"] if r["action"] == Action.RECONCILE and r["result"] == "BLOCKED"]
        assert set(blocked) <= set(issues), f"RECONCILE-blocked changes missing from Issues: {set(blocked) - set(issues)}"
        counts, fixes = self.effects.counts(), []
        for change_id in issues:
            present = counts.get(change_id, 0) > 0
            resolution = "applied" if present else "rolled-back"
            reason = f"the target {'holds' if present else 'does not hold'} the effect of {change_id}"
            fixed = self.cli("fix", change_id, "--resolution", resolution, "--reason", reason, "--json")
            assert fixed.returncode == 0, f"fix {change_id} {resolution} ended {fixed.returncode}:\n{fixed.stdout}\n{fixed.stderr}"
            fixes.append(f"{change_id}: {resolution}")
        return fixes

    def resolve(self, *, rounds: int = 8) -> list[str]:
        """Run until nothing is pending, fixing what the runs report as blocked. Returns the fixes."""
        from changes_app import services
        from changes_app.pipeline.plan import Action

        fixes = []
        for _ in range(rounds):
            run = self.run()
            assert run.returncode in (0, 3), f"run ended {run.returncode}:\n{run.stdout}\n{run.stderr}"
            assert not self.problems(), self.problems()
            if all(item.action == Action.SKIP for item in services.pipeline_plan().items):
                return fixes
            fixes += self.operator_fixes(run)
        raise AssertionError(f"still pending after {rounds} runs: {[(i.change.id, i.action.value) for i in services.pipeline_plan().items]}")

    def close(self) -> None:
        for child in self.children:
            child.close()


def run_results(child: Child) -> dict[str, str]:
    """A finished ``run --json``: each change's result."""
    return {result["change_id"]: result["result"] for result in child.json()["results"]}
