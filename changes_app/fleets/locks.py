"""The lock of one member of a target group: a database lease like the pipeline lock's, with its
fencing token from the member's row of the fence table (``UPDATE ... token + 1``), never from a
database sequence per member: a fleet of thousands of members makes no thousands of sequences."""

from __future__ import annotations

import uuid

from django.db import connections, router, transaction

from audit_app.services import FenceRefused
from changes_app.locks.base import Lease, RunCancelled
from changes_app.locks.database import DatabaseLeaseLock
from changes_app.models import Fence, LockLease, Run


def member_lock_name(*, environment: str, target: str, member: str) -> str:
    return f"member:{environment}:{target}:{member}"


def member_token_issue(name: str) -> int:
    """Issue the next fencing token of member lock ``name`` from its fence row. The update waits for
    the row lock a fenced transaction of the previous holder still holds (as ``fence_advance`` does)."""
    using = router.db_for_write(Fence)
    table = Fence._meta.db_table
    # One statement, one round trip: the row made at the lock's first token, advanced at every other.
    sql = f"INSERT INTO {table} (name, token) VALUES (%s, 1) ON CONFLICT (name) DO UPDATE SET token = {table}.token + 1 RETURNING token"
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(sql, [name])
        return cursor.fetchone()[0]


class MemberLease(Lease):
    """A lease whose fence check compares with the member's fence row on every database."""

    def statement(self, *, using: str) -> tuple[str, list]:
        connection = connections[using]
        sql = f"UPDATE {Fence._meta.db_table} SET checked_at = CURRENT_TIMESTAMP WHERE name = %s AND token = %s"
        params: list = [self.name, self.token]
        if self.cancel_check:
            self.cancel_check = False
            sql += f" AND NOT EXISTS (SELECT 1 FROM {Run._meta.db_table} WHERE id = %s AND cancel_requested_at IS NOT NULL)"
            params.append(Run._meta.pk.get_db_prep_value(self.run_id, connection))
        return sql, params

    def refused(self, *, using: str) -> None:
        newest = Fence.objects.using(using).filter(name=self.name).values_list("token", flat=True).first()
        if newest == self.token:
            by = Run.objects.using(using).filter(pk=self.run_id).values_list("cancel_requested_by", flat=True).first()
            raise RunCancelled(f"cancelled by {by}")
        self.lost_reason = self.lost_reason or f"fencing token {self.token} is no longer the newest"
        raise FenceRefused(f"fencing token {self.token} of lock {self.name!r} is stale: another holder took the lock")


class MemberLeaseLock(DatabaseLeaseLock):
    """The lease lock of one member: members of a group run in parallel, each under its own."""

    lease_class = MemberLease

    def token_issue(self) -> int:
        # From the member's row of the fence table, not a sequence per member.
        return member_token_issue(self.name)

    def try_acquire(self, *, run_id, actor) -> Lease | None:
        """As the pipeline lock's, in two statements and one commit on PostgreSQL (a member's lock is
        taken once per member of every fleet run): the lease claimed (its row made at the first
        claim), then the member's next token issued and recorded on the lease. The token is issued
        only once the lease is this claim's, so a claim that fails never moves the fence."""
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return super().try_acquire(run_id=run_id, actor=actor)
        lease, fence = LockLease._meta.db_table, Fence._meta.db_table
        claim = (
            f"INSERT INTO {lease} (name, owner, run_id, holder, host, pid, acquired_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, STATEMENT_TIMESTAMP(), STATEMENT_TIMESTAMP() + make_interval(secs => %s)) "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, run_id = EXCLUDED.run_id, holder = EXCLUDED.holder, "
            "host = EXCLUDED.host, pid = EXCLUDED.pid, acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at "
            f"WHERE {lease}.owner = '' OR {lease}.expires_at <= STATEMENT_TIMESTAMP() RETURNING 1"
        )
        # The fence row's update waits for the row lock a fenced transaction of the previous holder holds.
        issue = (
            f"WITH f AS (INSERT INTO {fence} (name, token) VALUES (%s, 1) "
            f"ON CONFLICT (name) DO UPDATE SET token = {fence}.token + 1 RETURNING token) "
            f"UPDATE {lease} SET token = f.token FROM f WHERE {lease}.name = %s RETURNING f.token"
        )
        run = LockLease._meta.get_field("run_id").get_db_prep_value(run_id, connection)
        with transaction.atomic(using=self.using), connection.cursor() as cursor:
            cursor.execute(claim, [self.name, uuid.uuid4().hex, run, actor.name, actor.host, actor.pid, float(self.lease_seconds)])
            if cursor.fetchone() is None:
                return None
            cursor.execute(issue, [self.name, self.name])
            token = cursor.fetchone()[0]
        return self.lease_class(self, token=token, run_id=run_id)
