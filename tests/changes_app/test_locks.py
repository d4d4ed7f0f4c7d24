"""The pipeline lock and its fence (docs/semantics.md §6), run cancellation, code skew and duplicate execution."""

import time
import uuid

import pytest

from audit_app.models import AuditEntry
from audit_app.services import Actor, FenceRefused
from changes_app import services
from changes_app.locks.backends import lock_backend
from changes_app.locks.base import Lease
from changes_app.locks.database import DatabaseLeaseLock
from changes_app.models import Run
from tests.support.trails import (
    cli,
    entries,
    journal_change,
    ledger,
    local_operator,
    markers,
    next_action,
    results,
    run_events,
    run_pipeline,
    sql_change,
    table_exists,
    written,
)

pytestmark = pytest.mark.django_db(transaction=True)


def holder_actor(name="other-runner"):
    return Actor(name=name, via="cli")


@pytest.fixture
def lock(unique):
    return DatabaseLeaseLock(f"test:{unique}", lease_seconds=60)


# -- the database lease lock ----------------------------------------------------------------------------


def test_lease_lock_is_mutually_exclusive(lock):
    first_run = uuid.uuid4()
    first = lock.try_acquire(run_id=first_run, actor=holder_actor("first"))

    assert first is not None
    assert lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor("second")) is None
    holder = lock.holder()
    assert (holder.holder, holder.run_id, holder.token) == ("first", str(first_run), first.token)


def test_lease_lock_fencing_tokens_strictly_increase(lock):
    tokens = []
    for _ in range(3):
        lease = lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor())
        tokens.append(lease.token)
        lease.release()
    lease = lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor())
    tokens.append(lease.token)
    lock.force_release()
    tokens.append(lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor()).token)

    assert all(later > earlier for earlier, later in zip(tokens, tokens[1:], strict=False)), tokens
    # A force release advances the fence itself: the released holder's token is two behind.
    assert tokens[-1] == tokens[-2] + 2


def test_lease_lock_is_released_only_by_its_owners_token(lock):
    owner = lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor("owner"))
    impostor = Lease(lock, token=owner.token - 1, run_id=uuid.uuid4())

    assert lock.release(impostor) is False
    assert lock.extend(impostor) is False
    assert lock.holder().holder == "owner"
    assert lock.release(owner) is True
    assert lock.holder() is None


def test_expired_lease_is_taken_over_and_the_old_lease_is_fenced_off(unique):
    lock = DatabaseLeaseLock(f"test:{unique}", lease_seconds=0.3)
    old = lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor("paused"))
    assert lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor("eager")) is None

    time.sleep(0.5)
    new = lock.try_acquire(run_id=uuid.uuid4(), actor=holder_actor("successor"))

    assert new is not None and new.token > old.token
    assert lock.holder().holder == "successor"
    with pytest.raises(FenceRefused, match=f"fencing token {old.token} .* is stale"):
        old.check(using="default")
    assert old.lost
    new.check(using="default")
    assert lock.extend(old) is False
    assert lock.release(old) is False
    assert lock.holder().holder == "successor"


# -- a run that loses its lease -------------------------------------------------------------------------


def test_run_whose_fence_advances_mid_run_is_aborted_and_writes_nothing_more(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    taken_over = (
        "from changes_app.locks.backends import lock_backend\nfrom changes_app.locks.base import fence_advance\nfence_advance(lock_backend().name)"
    )
    make_pipeline({"main": {"0001_a.py": journal_change(first, apply_extra=taken_over), "0002_b.py": journal_change(second)}})

    run = run_pipeline()

    assert run.status == Run.Status.ABORTED
    assert "lock lost" in run.status_reason
    assert results(run) == {first: "ABORTED", second: "NOT_REACHED"}
    # The apply happened, APPLIED was refused: the ledger says honestly that the outcome is unknown.
    assert ledger(first, second) == [(first, "STARTED")]
    assert journal.count(change=first) == 1 and journal.count(change=second) == 0
    assert run_events(run) == ["run.queued", "run.started", "lock.acquired", "change.started", "lock.lost", "run.aborted"]
    assert next_action(first) == "MANUAL_INTERVENTION"


def test_marker_run_whose_lock_is_force_released_mid_run_is_aborted_then_reconciled(make_pipeline, unique, external_pg):
    first, second = f"first-{unique}", f"second-{unique}"
    # An operator force-releases the lock while the change is inside its target transaction.
    released_mid_apply = f"""
        from changes_app.definitions import Change
        from changes_app.locks.backends import lock_backend


        class Create(Change):
            id = "{first}"
            author = "tests"
            target = "ext-pg"

            def apply(self, cursor):
                lock_backend().force_release()
                cursor.execute("CREATE TABLE k_{unique} (id integer)")
    """
    make_pipeline({"main": {"0001_a.py": released_mid_apply, "0002_b.yaml": sql_change(second, f"CREATE TABLE k2_{unique} (id integer)")}})

    aborted = run_pipeline()

    assert aborted.status == Run.Status.ABORTED
    assert results(aborted) == {first: "ABORTED", second: "NOT_REACHED"}
    assert ledger(first, second) == [(first, "STARTED")]
    assert [run_id for _, run_id, _ in markers(external_pg, first)] == [str(aborted.id)]
    assert not table_exists(f"k2_{unique}")

    # The next holder settles the stale holder's change from the marker; it is not applied twice.
    next_run = run_pipeline()
    assert results(next_run) == {first: "RECONCILED", second: "APPLIED"}
    assert ledger(first, second) == [(first, "STARTED"), (first, "APPLIED"), (second, "APPLIED")]
    assert len(markers(external_pg, first)) == 1


def test_second_run_while_the_lock_is_held_ends_locked_naming_the_holder(make_pipeline, unique, journal, settings):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "wait_seconds": 0.3}
    holding_run = uuid.uuid4()
    held = lock_backend().try_acquire(run_id=holding_run, actor=holder_actor("deploy-bot"))

    run = run_pipeline()

    assert run.status == Run.Status.LOCKED
    assert "deploy-bot" in run.status_reason and str(holding_run) in run.status_reason
    assert ledger(change) == []
    assert journal.entries() == []
    assert run_events(run) == ["run.queued", "run.started", "run.finished"]

    held.release()
    assert results(run_pipeline()) == {change: "APPLIED"}


def test_lock_status_and_force_release_are_shown_and_audited(make_pipeline, unique):
    make_pipeline({"main": {}})
    assert cli("lock", "status", "--json").json() == {"held": False, "holder": None}
    holding_run = uuid.uuid4()
    lease = lock_backend().try_acquire(run_id=holding_run, actor=holder_actor("stuck-runner"))

    status = cli("lock", "status", "--json")
    assert status.code == 0
    holder = status.json()["holder"]
    assert status.json()["held"] is True
    assert (holder["holder"], holder["run_id"], holder["token"], holder["expired"]) == ("stuck-runner", str(holding_run), lease.token, False)
    assert {"name", "host", "pid", "since", "expires_at"} <= set(holder)

    assert cli("lock", "release").code == 2
    released = cli("lock", "release", "--reason", "runner host died", "--json")
    assert released.code == 0
    assert released.json()["released"]["holder"] == "stuck-runner"
    audited = AuditEntry.objects.get(event="lock.force_released")
    assert (audited.reason, audited.details["run_id"], audited.details["token"]) == ("runner host died", str(holding_run), lease.token)
    assert cli("lock", "status", "--json").json()["held"] is False
    assert cli("lock", "release", "--reason", "again").code == 2
    with pytest.raises(FenceRefused):
        lease.check(using="default")


# -- cancel -----------------------------------------------------------------------------------------------


def test_cancelled_queued_run_is_aborted_at_once_and_never_executes(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)

    cancelled = services.run_cancel(run_id=queued.id, actor=holder_actor("operator"))

    assert cancelled.status == Run.Status.ABORTED
    assert cancelled.status_reason == "cancelled by operator"
    assert services.run_claim(run_id=queued.id) is None
    assert services.run_execute(run_id=queued.id).status == Run.Status.ABORTED
    assert run_events(queued) == ["run.queued", "run.aborted"]
    assert ledger(change) == []
    assert journal.entries() == []


def test_cancelled_running_run_stops_before_its_next_change(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    cancel = "from audit_app.services import Actor\nfrom changes_app import services\nservices.run_cancel(run_id=context.run_id, actor=Actor(name='operator'))"
    make_pipeline({"main": {"0001_a.py": journal_change(first, apply_extra=cancel), "0002_b.py": journal_change(second)}})

    run = run_pipeline()

    assert run.status == Run.Status.ABORTED
    assert run.status_reason == "cancelled by operator"
    assert results(run) == {first: "APPLIED", second: "NOT_REACHED"}
    assert ledger(first, second) == [(first, "STARTED"), (first, "APPLIED")]
    assert journal.count(change=second) == 0
    assert run_events(run) == [
        "run.queued",
        "run.started",
        "lock.acquired",
        "change.started",
        "run.cancel_requested",
        "change.applied",
        "lock.released",
        "run.aborted",
    ]
    assert next_action(second) == "APPLY"


def test_a_cancellation_seen_by_the_progress_write_stops_the_run_and_writes_no_progress(make_pipeline, unique, journal, monkeypatch):
    from changes_app.engine import executor as executor_module

    monkeypatch.setattr(executor_module, "PROGRESS_INTERVAL", 0.0)  # progress is due before every change
    first, second = f"first-{unique}", f"second-{unique}"
    cancel = "from audit_app.services import Actor\nfrom changes_app import services\nservices.run_cancel(run_id=context.run_id, actor=Actor(name='operator'))"
    make_pipeline({"main": {"0001_a.py": journal_change(first, apply_extra=cancel), "0002_b.py": journal_change(second)}})

    run = run_pipeline()

    assert (run.status, run.status_reason) == (Run.Status.ABORTED, "cancelled by operator")
    assert results(run) == {first: "APPLIED", second: "NOT_REACHED"}
    assert ledger(first, second) == [(first, "STARTED"), (first, "APPLIED")]
    assert journal.count(change=second) == 0
    assert run.current_change != second  # the progress naming the second change was never written


# -- code skew and duplicate execution ---------------------------------------------------------------------


def test_run_planned_on_another_pipeline_is_aborted_for_code_skew(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)
    make_pipeline({"main": {"0001_note.py": journal_change(change, rollback="ok")}})

    run = services.run_execute(run_id=queued.id)

    assert run.status == Run.Status.ABORTED
    assert run.status_reason.startswith("code skew:")
    assert run_events(run) == ["run.queued", "run.aborted"]
    assert ledger(change) == []
    assert journal.entries() == []


def test_duplicate_execution_of_a_claimed_run_does_nothing(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)
    assert services.run_claim(run_id=queued.id).status == Run.Status.RUNNING
    before = written()

    assert services.run_claim(run_id=queued.id) is None
    duplicate = services.run_execute(run_id=queued.id)

    assert duplicate.status == Run.Status.RUNNING
    assert written() == before
    assert ledger(change) == []
    assert journal.entries() == []


def test_finished_run_executed_again_applies_nothing_twice(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    run = run_pipeline()
    before = written()

    again = services.run_execute(run_id=run.id)

    assert again.status == Run.Status.SUCCEEDED
    assert written() == before
    assert entries(change)[-1].state == "APPLIED"
    assert journal.count(change=change) == 1
