"""One conformance suite for every pipeline lock backend (docs/semantics.md §6).

The database lease lock of the embedded default and the Redis lease lock of production honour the
same contract, so the same tests run against both: mutual exclusion under 16 concurrent acquirers,
expiry, extension by the heartbeat, release by the owner only, fencing tokens that only grow (and a
stale holder refused by the database), holder information and force release. Redis is the real
server on 127.0.0.1:6379; every test has its own lock name, so tests never share a key.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import psycopg
import pytest
import redis
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction
from django.utils import timezone

from audit_app.models import AuditEntry
from audit_app.services import Actor, FenceRefused, audit_record
from changes_app.locks.base import Lease, fence_issue
from changes_app.locks.database import DatabaseLeaseLock
from changes_app.locks.redis import RedisLeaseLock
from changes_app.models import Fence
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = f"{PG_SERVER}/postgres"
ACQUIRERS = 16
BACKENDS = {
    "database": lambda name, lease: DatabaseLeaseLock(name, lease_seconds=lease),
    "redis": lambda name, lease: RedisLeaseLock(name, lease_seconds=lease, url=REDIS_URL),
}


@pytest.fixture(params=sorted(BACKENDS))
def make_lock(request, unique):
    """``make_lock(lease)`` is a new client of this test's lock (as another process would have)."""
    name = f"conformance:{unique}"
    made = []

    def make(lease: float = 30.0):
        backend = BACKENDS[request.param](name, lease)
        made.append(backend)
        return backend

    yield make
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"flamingock:lock:{name}")
        client.close()
        for backend in made:
            backend.client.close()


def actor(label: str = "conformance", **kwargs) -> Actor:
    return Actor(name=f"tests:{label}", via="tests", **kwargs)


def acquire(backend, label: str = "conformance") -> Lease | None:
    return backend.try_acquire(run_id=uuid.uuid4(), actor=actor(label))


def fenced_check(lease: Lease) -> None:
    """What every fenced write does first: the check, inside a transaction."""
    with transaction.atomic():
        lease.check(using=DEFAULT_DB_ALIAS)


def in_threads(count: int, target) -> list[BaseException]:
    """Run ``target(index)`` in ``count`` threads, each with its own database connection."""
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            target(index)
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(index,), name=f"acquirer-{index}") for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an acquirer thread hung"
    return errors


def wait_until(predicate, *, timeout: float, what: str) -> float:
    """Poll ``predicate``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


# -- mutual exclusion ------------------------------------------------------------------------------


def test_exactly_one_of_16_concurrent_acquirers_wins_each_round(make_lock):
    rounds = 4
    barrier = threading.Barrier(ACQUIRERS)
    winners: list[list[int]] = [[] for _ in range(rounds)]
    tokens: list[int] = []

    def acquirer(index: int) -> None:
        backend = make_lock()
        try:
            for round_ in range(rounds):
                barrier.wait(timeout=60)
                lease = acquire(backend, f"acquirer-{index}")
                if lease is not None:
                    winners[round_].append(index)
                    tokens.append(lease.token)
                barrier.wait(timeout=60)  # everyone has tried before the winner lets go
                if lease is not None:
                    lease.release()
                barrier.wait(timeout=60)
        except BaseException:
            barrier.abort()
            raise

    errors = in_threads(ACQUIRERS, acquirer)
    assert not errors, errors
    assert [len(round_) for round_ in winners] == [1] * rounds, winners
    assert tokens == sorted(set(tokens)), f"fencing tokens must strictly increase round after round: {tokens}"


def test_holders_never_overlap_under_contention(make_lock):
    turns = 3
    intervals: list[tuple[float, float, int, int]] = []

    def acquirer(index: int) -> None:
        backend = make_lock()
        deadline = time.monotonic() + 90
        held = 0
        while held < turns:
            assert time.monotonic() < deadline, f"acquirer {index} starved"
            lease = acquire(backend, f"acquirer-{index}")
            if lease is None:
                time.sleep(random.uniform(0.001, 0.01))
                continue
            start = time.monotonic()
            time.sleep(0.003)  # hold it a moment, long enough for a second holder to show
            intervals.append((start, time.monotonic(), lease.token, index))
            lease.release()
            held += 1

    errors = in_threads(ACQUIRERS, acquirer)
    assert not errors, errors
    assert len(intervals) == ACQUIRERS * turns
    intervals.sort()
    overlaps = [(a, b) for a, b in zip(intervals, intervals[1:], strict=False) if b[0] <= a[1]]
    assert not overlaps, f"two holders at once: {overlaps[:3]}"
    tokens = [token for _, _, token, _ in intervals]
    assert tokens == sorted(set(tokens)), "each holder's token is newer than every earlier holder's"


# -- expiry and extension --------------------------------------------------------------------------


def test_a_lease_not_extended_can_be_taken_once_it_expires(make_lock):
    lease_seconds = 0.6
    asked_at = time.monotonic()  # the lease runs from no earlier than this
    first = acquire(make_lock(lease_seconds), "first")
    assert first is not None
    rival = make_lock(lease_seconds)
    taken: list[Lease] = []

    def rival_has_it() -> bool:
        lease = acquire(rival, "rival")
        if lease is not None:
            taken.append(lease)
        return bool(taken)

    wait_until(rival_has_it, timeout=lease_seconds + 3, what="the expired lease to be taken")
    waited = time.monotonic() - asked_at
    assert waited >= lease_seconds - 0.02, f"taken after {waited:.2f}s, before its lease of {lease_seconds}s ran out"
    assert taken[0].token > first.token
    assert rival.holder().run_id == str(taken[0].run_id)


def test_heartbeat_keeps_the_lease_past_several_leases(make_lock):
    lease_seconds = 1.0
    lease = acquire(make_lock(lease_seconds), "holder")
    lease.start_heartbeat()
    rival = make_lock(lease_seconds)
    try:
        until = time.monotonic() + 3 * lease_seconds
        attempts = 0
        while time.monotonic() < until:
            assert acquire(rival, "rival") is None, f"taken from a live holder after {attempts} attempts"
            attempts += 1
            time.sleep(0.05)
        assert not lease.lost, lease.lost_reason
        fenced_check(lease)
        holder = rival.holder()
        assert holder is not None and holder.run_id == str(lease.run_id) and not holder.expired
    finally:
        lease.release()
    assert acquire(rival, "rival") is not None, "a released lock is free at once"


# -- release ---------------------------------------------------------------------------------------


def test_only_the_owner_releases_a_stale_lease_release_leaves_the_new_holder(make_lock):
    lease_seconds = 0.4
    backend = make_lock(lease_seconds)
    stale = acquire(backend, "stale")
    time.sleep(lease_seconds + 0.3)
    current = acquire(make_lock(lease_seconds), "current")
    assert current is not None

    assert backend.release(stale) is False
    stale.release()  # what a holder that woke up late does on its way out
    assert backend.extend(stale) is False, "a stale holder cannot extend the new holder's lease"

    holder = make_lock().holder()
    assert holder is not None and holder.run_id == str(current.run_id)
    assert acquire(make_lock(lease_seconds), "third") is None, "the lock is still held by the current holder"
    current.release()
    assert make_lock().holder() is None
    assert acquire(make_lock(lease_seconds), "third") is not None


# -- fencing ---------------------------------------------------------------------------------------


def test_fencing_tokens_only_grow_and_a_stale_holder_is_refused(make_lock):
    backend = make_lock(0.4)
    leases: list[Lease] = []
    for _ in range(3):  # acquire and release
        lease = acquire(backend)
        leases.append(lease)
        lease.release()
    leases.append(acquire(backend))  # then force released
    assert backend.force_release() is not None
    leases.append(acquire(backend))  # then left to expire
    time.sleep(0.7)
    leases.append(acquire(backend))
    assert None not in leases
    tokens = [lease.token for lease in leases]
    assert tokens == sorted(set(tokens)), f"tokens must strictly increase: {tokens}"

    fenced_check(leases[-1])
    for stale in leases[:-1]:
        with pytest.raises(FenceRefused):
            fenced_check(stale)
        assert stale.lost, "a refused lease knows it is lost"
    # A fenced write by a stale holder leaves nothing behind.
    with pytest.raises(FenceRefused):
        audit_record(event="lock.probe", actor=actor(), environment="conformance", fence=leases[0])
    assert not AuditEntry.objects.filter(event="lock.probe").exists()
    audit_record(event="lock.probe", actor=actor(), environment="conformance", fence=leases[-1])
    assert AuditEntry.objects.filter(event="lock.probe", fencing_token=leases[-1].token).count() == 1


def test_a_stale_holder_is_refused_as_soon_as_its_successor_acquires_before_the_successor_writes(make_lock):
    lease_seconds = 0.4
    stale = acquire(make_lock(lease_seconds), "paused")
    time.sleep(lease_seconds + 0.2)
    successor = acquire(make_lock(lease_seconds), "successor")
    assert successor is not None and successor.token > stale.token

    # The successor has written nothing: its acquisition alone fences the paused holder out.
    with pytest.raises(FenceRefused, match=f"fencing token {stale.token} .* is stale"):
        fenced_check(stale)
    with pytest.raises(FenceRefused):
        audit_record(event="lock.probe", actor=actor(), environment="conformance", fence=stale)
    assert not AuditEntry.objects.filter(event="lock.probe").exists()
    fenced_check(successor)
    successor.release()


# -- holder information and force release ----------------------------------------------------------


def test_holder_shows_run_host_process_since_and_expiry(make_lock):
    lease_seconds = 30.0
    run_id = uuid.uuid4()
    before = timezone.now()
    lease = make_lock(lease_seconds).try_acquire(run_id=run_id, actor=actor("holder", host="host-a.example", pid=4242))
    after = timezone.now()
    holder = make_lock().holder()  # as another process sees it
    assert holder is not None
    assert (holder.run_id, holder.holder, holder.host, holder.pid, holder.token) == (str(run_id), "tests:holder", "host-a.example", 4242, lease.token)
    slack = timezone.timedelta(seconds=1)
    assert before - slack <= holder.since <= after + slack
    assert abs((holder.expires_at - holder.since).total_seconds() - lease_seconds) < 1.0
    assert not holder.expired
    shown = holder.as_dict()
    assert {"run_id", "holder", "host", "pid", "token", "since", "expires_at", "expired"} <= shown.keys()
    assert shown["expired"] is False and shown["pid"] == 4242


def test_force_release_frees_the_lock_and_fences_out_the_released_holder(make_lock):
    lease_seconds = 0.6
    lease = acquire(make_lock(lease_seconds), "holder")
    lease.start_heartbeat()
    try:
        released = make_lock().force_release()
        assert released is not None and released.run_id == str(lease.run_id)
        assert make_lock().holder() is None
        successor = acquire(make_lock(lease_seconds), "successor")
        assert successor is not None and successor.token > lease.token
        wait_until(lambda: lease.lost, timeout=3 * lease_seconds, what="the released holder's heartbeat to notice")
        with pytest.raises(FenceRefused):
            fenced_check(lease)
    finally:
        lease.release()  # lost: it must not touch the successor's lock
    holder = make_lock().holder()
    assert holder is not None and holder.run_id == str(successor.run_id)
    fenced_check(successor)
    successor.release()
    assert make_lock().force_release() is None, "nothing to release"


def test_redis_lock_tokens_keep_growing_after_redis_loses_its_keys(unique):
    """Redis may restart empty: the fence comes from the database, so tokens still only grow."""
    name = f"conformance:{unique}"
    backend = RedisLeaseLock(name, lease_seconds=30, url=REDIS_URL)
    try:
        first = acquire(backend)
        backend.client.delete(backend.key)  # what a restart without persistence does
        second = acquire(backend)
        assert second is not None and second.token > first.token
        with pytest.raises(FenceRefused):
            fenced_check(first)
        fenced_check(second)
        second.release()
    finally:
        backend.client.delete(backend.key)
        backend.client.close()


# -- the Redis lease and the database's token ------------------------------------------------------


def test_redis_lease_is_given_back_when_the_database_cannot_issue_its_token(unique, monkeypatch):
    backend = RedisLeaseLock(f"conformance:{unique}", lease_seconds=30, url=REDIS_URL)

    def unreachable(name):
        raise OperationalError("the audit database is unreachable")

    try:
        monkeypatch.setattr("changes_app.locks.redis.fence_issue", unreachable)
        with pytest.raises(OperationalError):
            acquire(backend)
        assert backend.client.exists(backend.key) == 0, "no lease is left held without its token"
        monkeypatch.undo()
        lease = acquire(backend)
        assert lease is not None, "the lock is free at once, not after the lease"
        lease.release()
    finally:
        backend.client.delete(backend.key)
        backend.client.close()


def test_redis_lease_set_by_an_older_version_is_respected_and_shown_as_held(unique):
    backend = RedisLeaseLock(f"conformance:{unique}", lease_seconds=30, url=REDIS_URL)
    try:
        backend.client.set(backend.key, uuid.uuid4().hex, px=30_000)  # redis-py's Lock: a bare owner token
        assert acquire(backend) is None
        holder = backend.holder()
        assert holder is not None and not holder.expired and holder.holder == "?"
    finally:
        backend.client.delete(backend.key)
        backend.client.close()


@pytest.mark.postgres
def test_a_locks_first_tokens_continue_above_the_tokens_recorded_before_it_had_a_sequence(unique):
    """An upgrade: the fence row holds the last token of the old issuer; the new sequence starts above it."""
    name = f"conformance:{unique}"
    Fence.objects.create(name=name, token=500)
    backend = RedisLeaseLock(name, lease_seconds=30, url=REDIS_URL)
    try:
        before_upgrade = Lease(backend, token=500, run_id=uuid.uuid4())
        lease = acquire(backend)
        assert lease.token == 501
        assert backend.holder().token == 501
        with pytest.raises(FenceRefused):
            fenced_check(before_upgrade)
        fenced_check(lease)
        lease.release()
        assert DatabaseLeaseLock(name, lease_seconds=30).try_acquire(run_id=uuid.uuid4(), actor=actor()).token == 502
    finally:
        backend.client.delete(backend.key)
        backend.client.close()


@pytest.mark.postgres
def test_concurrent_first_tokens_of_a_lock_are_all_distinct_and_only_the_newest_passes(unique):
    name = f"conformance:{unique}"
    barrier = threading.Barrier(8)
    tokens: list[int] = []

    def issue(index: int) -> None:
        barrier.wait(timeout=60)
        tokens.append(fence_issue(name))  # the first ones also create the lock's sequence

    assert not in_threads(8, issue)
    assert sorted(tokens) == list(range(1, 9)), tokens
    backend = DatabaseLeaseLock(name, lease_seconds=30)
    for token in range(1, 8):
        with pytest.raises(FenceRefused):
            fenced_check(Lease(backend, token=token, run_id=uuid.uuid4()))
    fenced_check(Lease(backend, token=8, run_id=uuid.uuid4()))


@pytest.mark.postgres
def test_redis_lease_is_given_back_when_the_audit_database_drops_the_connection(unique):
    backend = RedisLeaseLock(f"conformance:{unique}", lease_seconds=30, url=REDIS_URL)
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        acquire(backend).release()  # the token's statement is prepared on this connection
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(OperationalError, match="lost|terminat|closed"):
            acquire(backend)
        assert backend.client.exists(backend.key) == 0, "no lease is left held without its token"
        connection.close()  # what Django does with an unusable connection before the next request
        lease = acquire(backend)
        assert lease is not None
        fenced_check(lease)
        lease.release()
    finally:
        backend.client.delete(backend.key)
        backend.client.close()
