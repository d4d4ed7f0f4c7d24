"""Crashes for real (docs/semantics.md §1, §4, §5, §6): ``flamingock run`` in child processes killed with
SIGKILL at every boundary and at random moments, and paused with SIGSTOP past their lease, on the
real audit database (SQLite or PostgreSQL) and real targets. Each change counts its effects on its
target, so after every crash the ledger is checked against what the targets really hold.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass

import pytest
from django.db import connection

from audit_app.models import APPLIED_STATES, AuditEntry
from audit_app.models import ChangeStateName as S
from changes_app import services
from changes_app.cli.output import EXIT_INTEGRITY
from changes_app.models import LockLease, Run
from changes_app.pipeline.plan import Action
from tests.support.crash import LEASE, Effects, Lab, Spec, history, latest_states, run_results, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

EXIT_FAILED, EXIT_BLOCKED = 1, 3


@pytest.fixture
def lab(make_pipeline, subprocess_env, external_pg, journal, unique, tmp_path):
    effects = Effects(suffix=unique, external_dsn=external_pg, journal=journal)
    effects.create()
    crash_lab = Lab(make_pipeline=make_pipeline, subprocess_env=subprocess_env, effects=effects, directory=tmp_path, unique=unique)
    yield crash_lab
    crash_lab.close()
    effects.drop()


def acquired_token(child) -> int:
    entry = AuditEntry.objects.filter(event="lock.acquired", pid=child.pid).get()
    return entry.details["token"]


def assert_lock_left_by(dead) -> None:
    """The dead process still holds the lease: nothing but its expiry can free it."""
    holder = services.lock_status()
    assert holder is not None and holder.pid == dead.pid, holder


def assert_took_over(dead, follow_up) -> None:
    """The follow-up run waited for the dead holder's lease to expire, then took the lock with a newer token."""
    assert follow_up.json()["status"] != Run.Status.LOCKED, follow_up.stdout
    assert acquired_token(follow_up) > acquired_token(dead)


# -- a kill at each boundary ---------------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """A kill at ``boundary`` in the change under test, and what docs/semantics.md §5.5 says must follow."""

    kind: str
    boundary: str
    state: str | None  # the change's latest state after the kill
    effects: int  # its effects in the target after the kill
    next_action: str  # what the plan says next
    result: str  # its result in the next run
    history: tuple[str, ...]  # its states after the next run
    variant: str = "manual"  # journal changes: manual (default recovery), always_retry or verify
    evidence: str = ""  # the reconciliation's recorded evidence

    def __str__(self):
        return f"{self.kind}-{self.variant}-{self.boundary}" if self.kind == "journal" else f"{self.kind}-{self.boundary}"


APPLIED_ONCE = ("APPLIED",)
MARKER_RETRIED = ("STARTED", "ROLLED_BACK", "STARTED", "APPLIED")
CRASHES = [
    # Shared transaction: a kill before the commit leaves no trace at all; the next run applies.
    Crash("shared", "before_apply", None, 0, Action.APPLY, "APPLIED", APPLIED_ONCE),
    Crash("shared", "after_apply", None, 0, Action.APPLY, "APPLIED", APPLIED_ONCE),
    Crash("shared", "before_commit", None, 0, Action.APPLY, "APPLIED", APPLIED_ONCE),
    Crash("shared", "after_applied", S.APPLIED, 1, Action.SKIP, "ALREADY_APPLIED", APPLIED_ONCE),
    # Marker: STARTED; the marker row says whether the target committed, no human needed.
    Crash("marker", "after_started", S.STARTED, 0, Action.RECONCILE, "APPLIED", MARKER_RETRIED, evidence="no marker row"),
    Crash("marker", "before_apply", S.STARTED, 0, Action.RECONCILE, "APPLIED", MARKER_RETRIED, evidence="no marker row"),
    Crash("marker", "after_apply", S.STARTED, 0, Action.RECONCILE, "APPLIED", MARKER_RETRIED, evidence="no marker row"),
    Crash("marker", "after_target_commit", S.STARTED, 1, Action.RECONCILE, "RECONCILED", ("STARTED", "APPLIED"), evidence="marker row"),
    Crash("marker", "after_applied", S.APPLIED, 1, Action.SKIP, "ALREADY_APPLIED", ("STARTED", "APPLIED")),
    # Non-transactional: STARTED is an honest "unknown"; a human decides, unless the author said otherwise.
    Crash("journal", "after_started", S.STARTED, 0, Action.MANUAL_INTERVENTION, "BLOCKED", ("STARTED",)),
    Crash("journal", "before_apply", S.STARTED, 0, Action.MANUAL_INTERVENTION, "BLOCKED", ("STARTED",)),
    Crash("journal", "after_apply", S.STARTED, 1, Action.MANUAL_INTERVENTION, "BLOCKED", ("STARTED",)),
    Crash("journal", "after_applied", S.APPLIED, 1, Action.SKIP, "ALREADY_APPLIED", ("STARTED", "APPLIED")),
    Crash("journal", "after_started", S.STARTED, 0, Action.APPLY, "APPLIED", ("STARTED", "STARTED", "APPLIED"), variant="always_retry"),
    Crash("journal", "after_apply", S.STARTED, 1, Action.APPLY, "APPLIED", ("STARTED", "STARTED", "APPLIED"), variant="always_retry"),
    Crash("journal", "after_apply", S.STARTED, 1, Action.RECONCILE, "RECONCILED", ("STARTED", "APPLIED"), variant="verify", evidence="present"),
    Crash("journal", "after_started", S.STARTED, 0, Action.RECONCILE, "BLOCKED", ("STARTED",), variant="verify"),
]


@pytest.mark.slow
@pytest.mark.parametrize("crash", CRASHES, ids=str)
def test_kill_at_a_boundary_leaves_the_state_domain_names_and_the_next_run_settles_it(crash, lab):
    change = Spec(f"x-{lab.unique}", crash.kind, "0001", always_retry=crash.variant == "always_retry", verify=crash.variant == "verify")
    later = Spec(f"later-{lab.unique}", "shared", "0002")
    lab.pipeline([change, later])

    killed = lab.run(crash_at=f"{crash.boundary}:{change.id}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = latest_states().get(change.id)
    assert (state.state if state else None) == crash.state
    assert lab.effects.counts()[change.id] == crash.effects
    assert lab.effects.counts()[later.id] == 0
    assert not lab.problems()
    plan = services.pipeline_plan()
    assert plan.item(change.id).action == crash.next_action, plan.item(change.id).reason
    assert plan.item(later.id).action == (Action.BLOCKED if crash.next_action == Action.MANUAL_INTERVENTION else Action.APPLY)
    assert_lock_left_by(killed)

    follow_up = lab.run()
    assert_took_over(killed, follow_up)
    assert run_results(follow_up)[change.id] == crash.result, follow_up.stdout
    assert history(change.id) == list(crash.history)
    assert not lab.problems()
    if crash.evidence:
        reconciled = [entry.details for entry in AuditEntry.objects.filter(change_id=change.id, details__reconciled=True)]
        assert len(reconciled) == 1 and crash.evidence in reconciled[0]["evidence"], reconciled
    if crash.variant == "always_retry":
        # Applied again, as its author allowed, with its effect made once.
        assert lab.effects.attempts(change.id) == crash.effects + 1
    if crash.result == "BLOCKED":
        # The stage waits for a human; nothing after the change runs meanwhile.
        assert follow_up.returncode == EXIT_BLOCKED
        assert run_results(follow_up)[later.id] == "BLOCKED"
        assert lab.effects.counts()[later.id] == 0
        assert lab.effects.counts()[change.id] == crash.effects
        # The operator looks at the journal, as the guidance says, and records what it shows.
        assert lab.operator_fixes(follow_up) == [f"{change.id}: {'applied' if crash.effects else 'rolled-back'}"]
        assert latest_states()[change.id].state == (S.MANUAL_MARKED_AS_APPLIED if crash.effects else S.MANUAL_MARKED_AS_ROLLED_BACK)
        assert lab.run().returncode == 0
    else:
        assert follow_up.returncode == 0, follow_up.stdout
    counts = lab.effects.counts()
    assert (counts[change.id], counts[later.id]) == (1, 1)
    assert latest_states()[change.id].state in APPLIED_STATES
    assert services.pipeline_plan().count(Action.APPLY, Action.RECONCILE, Action.MANUAL_INTERVENTION) == 0


@pytest.mark.slow
@pytest.mark.parametrize("boundary", ["after_lock", "before_release"])
def test_kill_outside_any_change_leaves_every_change_settled_and_the_lease_expires(boundary, lab):
    specs = [Spec(f"s-{lab.unique}", "shared", "0001"), Spec(f"m-{lab.unique}", "marker", "0002"), Spec(f"j-{lab.unique}", "journal", "0003")]
    lab.pipeline(specs)

    killed = lab.run(crash_at=boundary)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = boundary == "before_release"
    assert {spec.id: (s.state if (s := latest_states().get(spec.id)) else None) for spec in specs} == {
        spec.id: S.APPLIED if done else None for spec in specs
    }
    assert [lab.effects.counts()[spec.id] for spec in specs] == [1 if done else 0] * 3
    assert [item.action for item in services.pipeline_plan().items] == [Action.SKIP if done else Action.APPLY] * 3
    assert_lock_left_by(killed)

    follow_up = lab.run()
    assert follow_up.returncode == 0, follow_up.stdout
    assert_took_over(killed, follow_up)
    assert follow_up.json()["status"] == (Run.Status.NO_CHANGES if done else Run.Status.SUCCEEDED)
    assert [lab.effects.counts()[spec.id] for spec in specs] == [1, 1, 1]
    assert [history(spec.id) for spec in specs] == [["APPLIED"], ["STARTED", "APPLIED"], ["STARTED", "APPLIED"]]
    assert not lab.problems()


# -- kills at random moments -----------------------------------------------------------------------

TRIALS = 10
CHANGE_DELAY = 0.2  # seconds each apply takes, so that most kills land inside a change
MAX_KILL_DELAY = 0.8  # seconds after the run took the lock: a few changes per trial


def mixed_pipeline(unique: str) -> list[Spec]:
    """30 changes in three stages, mixing the three strategies and the journal's recoveries."""
    kinds = ["shared", "marker", "journal"]
    variants = ["manual", "verify", "always_retry"]
    specs = []
    for number in range(30):
        kind = kinds[number % 3]
        variant = variants[(number // 3) % 3] if kind == "journal" else ""
        specs.append(
            Spec(
                f"{kind[0]}{number:02d}-{unique}",
                kind,
                f"{number + 1:04d}",
                stage=["alpha", "beta", "gamma"][number // 10],
                delay=CHANGE_DELAY,
                always_retry=variant == "always_retry",
                verify=variant == "verify",
            )
        )
    return specs


def trial_outcome(specs: list[Spec], before: set[str], returncode: int, delay: float, counts) -> str:
    states = latest_states()
    settled = [spec.id for spec in specs if spec.id in states and states[spec.id].state in APPLIED_STATES and spec.id not in before]
    open_ = [
        f"{spec.id} {states[spec.id].state} with {counts.get(spec.id, 0)} effect(s)"
        for spec in specs
        if spec.id in states and states[spec.id].state not in APPLIED_STATES
    ]
    how = "killed" if returncode == -signal.SIGKILL else f"finished first (exit {returncode})"
    return f"{how} {delay:.2f}s after taking the lock: +{len(settled)} applied; open: {', '.join(open_) or 'none'}"


@pytest.mark.slow
def test_random_kills_never_apply_a_change_twice_and_always_leave_a_truthful_ledger(lab, settings):
    seed = int(os.environ.get("FLAMINGOCK_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    print(f"crash seed {seed} (FLAMINGOCK_CRASH_SEED={seed} replays the same kill delays)")
    specs = mixed_pipeline(lab.unique)
    lab.pipeline(specs)

    fixes: list[str] = []
    for trial in range(1, TRIALS + 1):
        before = {change_id for change_id, row in latest_states().items() if row.state in APPLIED_STATES}
        child = lab.spawn("flamingock", "run", "--json")
        wait_for(
            lambda child=child: LockLease.objects.filter(pid=child.pid).exclude(owner="").exists() or child.returncode is not None,
            timeout=30,
            what="the run to take the lock",
        )
        delay = rng.uniform(0, MAX_KILL_DELAY)
        time.sleep(delay)
        returncode = child.kill()
        outcome = trial_outcome(specs, before, returncode, delay, lab.effects.counts())
        print(f"trial {trial}: {outcome}")
        problems = lab.problems()
        assert not problems, f"seed {seed}, trial {trial} ({outcome}): {problems}"
        if returncode == EXIT_BLOCKED:  # the run ended before the kill and reported issues
            fixes += lab.operator_fixes(child)
            print(f"  operator: {fixes}")

    fixes += lab.resolve()
    print(f"fixes: {len(fixes)}: {fixes}")
    states, counts = latest_states(), lab.effects.counts()
    assert {spec.id: states[spec.id].state for spec in specs if states[spec.id].state not in APPLIED_STATES} == {}, f"seed {seed}"
    assert {spec.id: counts.get(spec.id, 0) for spec in specs if counts.get(spec.id, 0) != 1} == {}, f"seed {seed}"
    marked = {change_id for change_id, resolution in (fix.split(": ") for fix in fixes) if resolution == "applied"}
    assert {spec.id for spec in specs if states[spec.id].state == S.MANUAL_MARKED_AS_APPLIED} == marked, f"seed {seed}"
    # The killed runs are still RUNNING: validate reports them as operational drift (exit 6)
    # until the reaper has settled them, as an operator's beat would.
    assert lab.cli("validate").returncode == EXIT_INTEGRITY
    settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = LEASE
    time.sleep(LEASE + 0.5)
    reaped = services.runs_reap()
    assert not Run.objects.filter(status=Run.Status.RUNNING).exists(), reaped
    assert lab.cli("validate").returncode == 0


# -- a paused holder ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_paused_holder_in_a_journal_change_is_fenced_out_after_a_takeover(lab):
    inside = lab.directory / "inside"
    first = Spec(f"s1-{lab.unique}", "shared", "0001")
    paused = Spec(f"j2-{lab.unique}", "journal", "0002", verify=True, announce=str(inside), hold=LEASE)
    rest = [Spec(f"s3-{lab.unique}", "shared", "0003"), Spec(f"j4-{lab.unique}", "journal", "0004")]
    lab.pipeline([first, paused, *rest])

    stale = lab.spawn("flamingock", "run", "--json")
    wait_for(inside.exists, timeout=30, what="the first run to be inside the journal change")
    stale.signal(signal.SIGSTOP)  # its effect is in the journal; APPLIED is not written yet
    # Its heartbeat is paused with it: the lease runs out and the second run takes over.
    second = lab.run()
    assert second.returncode == 0, second.stdout
    assert run_results(second) == {first.id: "ALREADY_APPLIED", paused.id: "RECONCILED", rest[0].id: "APPLIED", rest[1].id: "APPLIED"}
    stale.signal(signal.SIGCONT)
    stale.wait(timeout=30)

    assert stale.returncode == EXIT_FAILED, stale.stderr
    outcome = stale.json()
    assert outcome["status"] == Run.Status.ABORTED
    assert "is stale: another holder took the lock" in outcome["reason"]
    assert {spec.id: lab.effects.counts()[spec.id] for spec in [first, paused, *rest]} == dict.fromkeys(
        [first.id, paused.id, rest[0].id, rest[1].id], 1
    )
    # The stale run's APPLIED was refused: the change's history is its STARTED, then the takeover's evidence.
    entries = AuditEntry.objects.filter(change_id=paused.id).order_by("id")
    assert [(entry.state, str(entry.run_id)) for entry in entries] == [(S.STARTED, outcome["run_id"]), (S.APPLIED, second.json()["run_id"])]
    assert entries.last().details["evidence"] == "verify probe found the effect present"
    takeover = AuditEntry.objects.get(event="lock.acquired", pid=second.pid).pk
    assert not AuditEntry.objects.filter(run_id=outcome["run_id"], pk__gt=takeover).exclude(state="").exists()
    assert AuditEntry.objects.filter(run_id=outcome["run_id"], event="lock.lost").exists()
    assert not lab.problems()


@pytest.mark.slow
def test_paused_holder_in_a_shared_transaction_never_applies_twice(lab):
    inside = lab.directory / "inside"
    paused = Spec(f"s1-{lab.unique}", "shared", "0001", announce=str(inside), hold=LEASE)
    rest = [Spec(f"j2-{lab.unique}", "journal", "0002"), Spec(f"s3-{lab.unique}", "shared", "0003")]
    lab.pipeline([paused, *rest])

    stale = lab.spawn("flamingock", "run", "--json")
    wait_for(inside.exists, timeout=30, what="the first run to be inside the shared transaction")
    stale.signal(signal.SIGSTOP)  # its row is inserted, its transaction open
    second = lab.spawn("flamingock", "run", "--json")
    if connection.vendor == "postgresql":
        # The server ends the paused transaction (idle_in_transaction_session_timeout is below
        # the lease): its row is gone, and the second run takes over and applies everything.
        second.wait(timeout=30)
        assert second.returncode == 0, second.stdout
        assert set(run_results(second).values()) == {"APPLIED"}
        stale.signal(signal.SIGCONT)
        stale.wait(timeout=30)
        assert stale.returncode == EXIT_FAILED, stale.stderr
        outcome = stale.json()
        assert outcome["status"] == Run.Status.ABORTED
        assert "is stale: another holder took the lock" in outcome["reason"]
        assert not AuditEntry.objects.filter(run_id=outcome["run_id"]).exclude(state="").exists()
    else:
        # SQLite has one writer and the paused transaction holds it: no takeover can happen, and
        # the second run cannot even record itself until the first one resumes.
        time.sleep(LEASE + 1)
        assert second.returncode is None
        assert Run.objects.count() == 1
        stale.signal(signal.SIGCONT)
        stale.wait(timeout=60)
        second.wait(timeout=60)
        # Whichever got the lock after the resume, nothing ran twice and the ledger tells the truth.
        print(f"after the resume: first run {stale.json()['status']}, second run {second.json()['status']}")
        assert stale.returncode in (0, EXIT_FAILED), stale.stderr
        assert second.returncode in (0, EXIT_BLOCKED), second.stderr
        assert not lab.problems()
        lab.resolve()
    assert not lab.problems()
    assert {spec.id: lab.effects.counts()[spec.id] for spec in [paused, *rest]} == dict.fromkeys([paused.id, rest[0].id, rest[1].id], 1)
    assert {row.state for row in latest_states().values()} <= set(APPLIED_STATES)
