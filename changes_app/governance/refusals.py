"""Refusals are evidence (docs/governance.md, "Refusals"; docs/semantics.md §13.3): a refused governed action,
decision, force-release or login writes an entry, folded so that a flood cannot bloat the trail.

Time is cut into windows of ``FLAMINGOCK_REFUSAL_WINDOW`` seconds. The first refusal of a window
per (actor or client address, reason) is written; later ones are only counted, in the cache. The
first refusal of a later window first closes the earlier one with an entry carrying ``folded: n``
(when n > 0), then is written itself. The counters live in the cache, outside the trail: a cache
shared by every process (Redis) folds across processes; losing it loses counts, never entries.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache

from audit_app.services import Actor, audit_record
from changes_app.errors import RequestStale
from changes_app.governance.permissions import PermissionRefused, SelfDecisionRefused

logger = logging.getLogger("flamingock.refusals")

ACCESS_REFUSED = "access.refused"
LOGIN_FAILED = "auth.login_failed"

PERMISSION = "permission"
SELF_DECISION = "self_decision"
STALE_CHECKSUM = "stale_checksum"
NOT_VISIBLE = "not_visible"
LOGIN = "login"
REASONS = (PERMISSION, SELF_DECISION, STALE_CHECKSUM, NOT_VISIBLE, LOGIN)

#: How long a window's counters outlive it, waiting for the refusal that closes it.
_KEEP_SECONDS = 7 * 24 * 3600


def _now() -> float:
    return time.time()


def refusal_window() -> int:
    return max(1, int(getattr(settings, "FLAMINGOCK_REFUSAL_WINDOW", 600)))


def _key(who: str, reason: str) -> str:
    # Hashed: an address or a typed user name must not shape a cache key.
    return "flamingock:refused:" + hashlib.sha256(f"{reason}\x00{who}".encode()).hexdigest()[:32]


def refusals_counted(*, who: str, reason: str) -> int:
    """Refusals of (``who``, ``reason``) in the current window, the written one included."""
    window = int(_now() // refusal_window())
    counted = cache.get(f"{_key(who, reason)}:{window}")
    return 0 if counted is None else counted + 1


def refusal_record(
    *,
    reason: str,
    action: str,
    object: str = "",
    actor: Actor | None = None,
    address: str = "",
    message: str = "",
    event: str = ACCESS_REFUSED,
    details: dict | None = None,
) -> bool:
    """Record one refusal, folded per window; returns whether an entry was written for it.

    ``actor`` is who was refused; without one (a failed login) the client ``address`` is.
    Never raises: the refusal the caller is about to report matters more than its record.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")
    who = actor.name if actor is not None else (address or "unknown")
    try:
        return _fold(
            who=who, reason=reason, action=action, object=object, actor=actor, address=address, message=message, event=event, details=details
        )
    except Exception:  # the trail refuses writes (quarantine), or the cache is down
        logger.exception("could not record a refusal (%s, %s)", event, reason)
        return False


def _fold(*, who, reason, action, object, actor, address, message, event, details) -> bool:
    length = refusal_window()
    now = _now()
    window = int(now // length)
    key = _key(who, reason)
    if not cache.add(f"{key}:{window}", 0, timeout=_KEEP_SECONDS):
        try:
            cache.incr(f"{key}:{window}")
        except ValueError:  # the counter expired between add and incr
            cache.add(f"{key}:{window}", 1, timeout=_KEEP_SECONDS)
        return False
    # This is the window's first refusal: only this process closes the previous window.
    actor = actor or Actor(name=address or "unknown", via="web")
    environment = settings.FLAMINGOCK_ENVIRONMENT
    previous = cache.get(f"{key}:last")
    cache.set(f"{key}:last", window, timeout=_KEEP_SECONDS)
    if previous is not None and previous != window:
        folded = cache.get(f"{key}:{previous}") or 0
        cache.delete(f"{key}:{previous}")
        if folded:
            audit_record(
                event=event,
                actor=actor,
                environment=environment,
                reason=f"{folded} more refusal(s) of {who} ({reason}) in the window",
                details={
                    "reason": reason,
                    "folded": folded,
                    "window_start": previous * length,
                    "window_end": (previous + 1) * length,
                    **({"address": address} if address else {}),
                },
            )
    audit_record(
        event=event,
        actor=actor,
        environment=environment,
        reason=message,
        details={"reason": reason, "action": action, "object": object, **({"address": address} if address else {}), **(details or {})},
    )
    return True


def refusal_reason(error: BaseException) -> str | None:
    """The reason code of a refusal a service raised, or ``None`` for an error that is no refusal."""
    if isinstance(error, SelfDecisionRefused):
        return SELF_DECISION
    if isinstance(error, PermissionRefused):
        return PERMISSION
    if isinstance(error, RequestStale):
        return STALE_CHECKSUM
    return None


def refusals_recorded(action: str, *, object: str = "") -> Callable:
    """Decorate a service: a refusal it raises is recorded (outside the service's own transaction,
    which rolls back) and raised on. ``action`` and ``object`` are formatted with its keyword
    arguments (``"request #{request_id}"``). A refusal passing through several decorated services
    is recorded once, by the innermost."""

    def decorate(service: Callable) -> Callable:
        @functools.wraps(service)
        def wrapped(*args, **kwargs):
            try:
                return service(*args, **kwargs)
            except Exception as error:
                reason = refusal_reason(error)
                if reason is not None and not getattr(error, "flamingock_recorded", False):
                    error.flamingock_recorded = True
                    refusal_record(
                        reason=reason,
                        action=action.format_map(_Missing(kwargs)),
                        object=object.format_map(_Missing(kwargs)),
                        actor=kwargs.get("actor"),
                        message=str(error),
                    )
                raise

        return wrapped

    return decorate


class _Missing(dict):
    def __missing__(self, key):
        return "?"
