"""The production pipeline lock: a Redis lease (redis-py's ``Lock``) plus the database fence.

redis-py's ``Lock`` already does what a lease needs: ``SET NX PX`` to acquire, a Lua
compare-and-extend and a Lua compare-and-delete keyed by a random owner token. Redis may restart
empty, so the fencing token is never taken from Redis: it comes from the audit database
(:func:`changes_app.locks.fence_advance`), and every fenced write is checked there.
"""

from __future__ import annotations

import json
import time
from datetime import UTC

import redis
from django.conf import settings
from django.utils import timezone
from redis.exceptions import LockError

from .locks import Holder, Lease, fence_advance


class RedisLeaseLock:
    def __init__(self, name: str, *, lease_seconds: float = 60.0, url: str | None = None):
        self.name = name
        self.lease_seconds = lease_seconds
        self.client = redis.Redis.from_url(url or settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
        self.key = f"flamingock:lock:{name}"
        self.info_key = f"{self.key}:holder"

    def _lock(self):
        # thread_local=False: the heartbeat thread extends the lease the main thread acquired.
        return self.client.lock(self.key, timeout=self.lease_seconds, blocking=False, thread_local=False)

    def try_acquire(self, *, run_id, actor) -> Lease | None:
        handle = self._lock()
        if not handle.acquire(blocking=False):
            return None
        token = fence_advance(self.name)
        info = {"run_id": str(run_id), "holder": actor.name, "host": actor.host, "pid": actor.pid, "token": token, "since": time.time()}
        self.client.set(self.info_key, json.dumps(info), px=int(self.lease_seconds * 1000))
        lease = Lease(self, token=token, run_id=run_id)
        lease.handle = handle
        return lease

    def extend(self, lease: Lease) -> bool:
        try:
            lease.handle.extend(self.lease_seconds, replace_ttl=True)
        except LockError:
            return False
        self.client.pexpire(self.info_key, int(self.lease_seconds * 1000))
        return True

    def release(self, lease: Lease) -> bool:
        try:
            lease.handle.release()
        except LockError:
            return False
        self.client.delete(self.info_key)
        return True

    def holder(self) -> Holder | None:
        with self.client.pipeline() as pipe:
            pipe.pttl(self.key)
            pipe.get(self.info_key)
            ttl, raw = pipe.execute()
        if ttl is None or ttl < 0:
            return None
        info = json.loads(raw) if raw else {}
        now = timezone.now()
        since = timezone.datetime.fromtimestamp(info["since"], tz=UTC) if info.get("since") else None
        return Holder(
            self.name, info.get("run_id", ""), info.get("holder", "?"), info.get("host", ""), info.get("pid"), info.get("token"),
            since, now + timezone.timedelta(milliseconds=ttl),
        )  # fmt: skip

    def force_release(self) -> Holder | None:
        holder = self.holder()
        if holder is None:
            return None
        self.client.delete(self.key, self.info_key)
        # Advancing the fence makes sure the released holder can write nothing more.
        fence_advance(self.name)
        return holder
