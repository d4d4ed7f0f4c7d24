"""The database lease lock: the embedded default, with the same contract as the Redis lock."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, router, transaction
from django.db.models import DateTimeField, ExpressionWrapper, Q, Value
from django.db.models.functions import Now

from changes_app.locks.base import Holder, Lease, fence_advance
from changes_app.models import LockLease


class DatabaseLeaseLock:
    """A lease lock in the audit database; the embedded default, and the same contract as Redis."""

    def __init__(self, name: str, *, lease_seconds: float = 60.0):
        self.name = name
        self.lease_seconds = lease_seconds
        self.using = router.db_for_write(LockLease)

    #: The lease a holder gets (a member's lock fences against its own row: changes_app.fleets.locks).
    lease_class = Lease

    def token_issue(self) -> int:
        """The next fencing token of this lock (waits for the previous holder's fenced transaction)."""
        return fence_advance(self.name)

    def _expiry(self):
        return ExpressionWrapper(Now() + Value(timedelta(seconds=self.lease_seconds)), output_field=DateTimeField())

    def try_acquire(self, *, run_id, actor) -> Lease | None:
        try:
            LockLease.objects.using(self.using).get_or_create(name=self.name)
        except IntegrityError:
            pass
        with transaction.atomic(using=self.using):
            claimed = (
                LockLease.objects.using(self.using)
                .filter(name=self.name)
                .filter(Q(owner="") | Q(expires_at__lte=Now()))
                .update(
                    owner=uuid.uuid4().hex,
                    run_id=run_id,
                    holder=actor.name,
                    host=actor.host,
                    pid=actor.pid,
                    acquired_at=Now(),
                    expires_at=self._expiry(),
                )
            )
            if not claimed:
                return None
            token = self.token_issue()
            LockLease.objects.using(self.using).filter(name=self.name).update(token=token)
        return self.lease_class(self, token=token, run_id=run_id)

    def extend(self, lease: Lease) -> bool:
        return bool(LockLease.objects.using(self.using).filter(name=self.name, token=lease.token).exclude(owner="").update(expires_at=self._expiry()))

    def release(self, lease: Lease) -> bool:
        return bool(
            LockLease.objects.using(self.using)
            .filter(name=self.name, token=lease.token)
            .update(owner="", run_id=None, holder="", host="", pid=None, expires_at=None)
        )

    def holder(self) -> Holder | None:
        row = LockLease.objects.using(self.using).filter(name=self.name).exclude(owner="").first()
        if row is None:
            return None
        return Holder(self.name, str(row.run_id or ""), row.holder, row.host, row.pid, row.token, row.acquired_at, row.expires_at)

    def force_release(self) -> Holder | None:
        with transaction.atomic(using=self.using):
            row = LockLease.objects.using(self.using).select_for_update().filter(name=self.name).exclude(owner="").first()
            if row is None:
                return None
            holder = Holder(self.name, str(row.run_id or ""), row.holder, row.host, row.pid, row.token, row.acquired_at, row.expires_at)
            LockLease.objects.using(self.using).filter(name=self.name).update(owner="", run_id=None, holder="", host="", pid=None, expires_at=None)
        # Advancing the fence makes sure the released holder can write nothing more.
        self.token_issue()
        return holder
