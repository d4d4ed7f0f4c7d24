"""The production pipeline lock: a Redis lease plus the database fence.

One round trip to Redis to acquire and one to release, as redis-py's own ``Lock``: the lease is
one key set with ``NX PX``, whose value names the holder (run, host, process, since) and proves
ownership; extension and release are scripts that compare that value before they act. Redis may
restart empty, so the fencing token is never taken from Redis: once the lease is held, the audit
database issues it (:func:`changes_app.locks.base.fence_issue`, which waits for the previous holder's
fenced transaction to end), and every fenced write is checked there.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import UTC

import redis
from django.conf import settings
from django.db import router
from django.utils import timezone

from changes_app.locks.base import Holder, Lease, fence_advance, fence_issue, fence_newest
from changes_app.models import Fence

EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisLeaseLock:
    def __init__(self, name: str, *, lease_seconds: float = 60.0, url: str | None = None):
        self.name = name
        self.lease_seconds = lease_seconds
        self.client = redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
        self.key = f"flamingock:lock:{name}"
        self._extend = self.client.register_script(EXTEND)
        self._release = self.client.register_script(RELEASE)

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    def try_acquire(self, *, run_id, actor) -> Lease | None:
        info = {"owner": uuid.uuid4().hex, "run_id": str(run_id), "holder": actor.name, "host": actor.host, "pid": actor.pid, "since": time.time()}
        value = json.dumps(info)
        if not self.client.set(self.key, value, nx=True, px=self.lease_ms):
            return None
        # The token after the lease: only a holder takes one, so the holder's is always the newest.
        try:
            token = fence_issue(self.name)
        except BaseException:
            # No lease without its token: free the lock now rather than at its expiry.
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[self.key], args=[value])
            raise
        lease = Lease(self, token=token, run_id=run_id)
        lease.handle = value
        return lease

    def extend(self, lease: Lease) -> bool:
        return bool(self._extend(keys=[self.key], args=[lease.handle, self.lease_ms]))

    def release(self, lease: Lease) -> bool:
        return bool(self._release(keys=[self.key], args=[lease.handle]))

    def holder(self) -> Holder | None:
        with self.client.pipeline() as pipe:
            pipe.pttl(self.key)
            pipe.get(self.key)
            ttl, raw = pipe.execute()
        if ttl is None or ttl < 0 or raw is None:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        if not isinstance(info, dict):  # set by an older version (a bare owner token): held, by whom unknown
            info = {}
        # The holder's token is the newest the database issued for this lock (taken right after the lease).
        token = fence_newest(self.name, using=router.db_for_write(Fence))
        since = timezone.datetime.fromtimestamp(info["since"], tz=UTC) if info.get("since") else None
        return Holder(
            self.name, info.get("run_id", ""), info.get("holder", "?"), info.get("host", ""), info.get("pid"), token,
            since, timezone.now() + timezone.timedelta(milliseconds=ttl),
        )  # fmt: skip

    def force_release(self) -> Holder | None:
        holder = self.holder()
        if holder is None:
            return None
        self.client.delete(self.key)
        # Recording a newer token at once makes sure the released holder can write nothing more.
        fence_advance(self.name)
        return holder
