"""Which lock backend this environment's pipeline lock uses, by name or dotted path."""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from changes_app.locks.base import LockBackend

#: The built-in backends; any other value of ``FLAMINGOCK_LOCK["backend"]`` is a dotted class path.
BACKENDS = {
    "database": "changes_app.locks.database.DatabaseLeaseLock",
    "redis": "changes_app.locks.redis.RedisLeaseLock",
}


def lock_backend() -> LockBackend:
    """A new instance of the configured backend for this environment's pipeline lock."""
    config = settings.FLAMINGOCK_LOCK
    name = f"pipeline:{settings.FLAMINGOCK_ENVIRONMENT}"
    backend = config.get("backend") or ("redis" if settings.REDIS_URL else "database")
    return import_string(BACKENDS.get(backend, backend))(name, lease_seconds=config.get("lease_seconds", 60.0))


_shared: dict[tuple, LockBackend] = {}


def lock_backend_shared() -> LockBackend:
    """The configured backend, one per process and configuration: a Redis backend keeps its
    connection pool from one run to the next instead of connecting at every run start."""
    key = (settings.FLAMINGOCK_ENVIRONMENT, settings.REDIS_URL, repr(sorted(settings.FLAMINGOCK_LOCK.items())))
    backend = _shared.get(key)
    if backend is None:
        backend = _shared[key] = lock_backend()
    return backend
