"""The one writer of the audit trail.

Every entry, by a person or by the system, goes through :func:`audit_record`. It is the single
place where secrets are redacted, where a run's fencing token is checked and where the change's
latest state is re-read before the entry commits, so the hash chain and signed checkpoints can be
added here without touching the engine.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import router, transaction
from django.db.models import F

from .models import APPLIED_STATES, AuditEntry, ChangeState, ChangeStateName
from .redaction import redact, redact_data

#: FLAMINGOCK_HOSTNAME names the host in the trail where the OS name is not telling (containers).
HOSTNAME = os.environ.get("FLAMINGOCK_HOSTNAME") or socket.gethostname()


class FenceRefused(Exception):
    """The run's fencing token is no longer the newest: another holder took the lock."""


class StateMoved(Exception):
    """The change's latest state is not the one the writer's decision was based on."""


class Fence(Protocol):
    token: int

    def check(self, *, using: str) -> None:
        """Raise :class:`FenceRefused` unless ``token`` is still the newest; lock it until commit."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a proven user, the local operator, or a service identity."""

    name: str
    user_id: int | None = None
    via: str = "cli"
    #: The operating-system user behind a CLI command, recorded beside the proven identity.
    os_user: str = ""
    host: str = HOSTNAME
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class ChangeRef:
    """The identifying fields of a change recorded with each of its entries."""

    id: str
    stage: str = ""
    order: str = ""
    target: str = ""
    checksum: str = ""
    transaction_strategy: str = ""
    recovery_strategy: str = ""


UNCHECKED: Any = object()


def audit_record(
    *,
    event: str,
    actor: Actor,
    environment: str,
    change: ChangeRef | None = None,
    state: str = "",
    run_id: uuid.UUID | None = None,
    fence: Fence | None = None,
    expected_entry_id: int | None = UNCHECKED,
    duration_ms: float | None = None,
    reason: str = "",
    error: str = "",
    rollback_error: str = "",
    details: dict | None = None,
    counts_as_apply: bool | None = None,
    using: str | None = None,
) -> AuditEntry:
    """Append one entry, atomically with the change-state projection.

    When called inside a larger transaction (the shared-transaction strategy) these are its last
    statements: the fence check, the state re-read, the insert and the projection update.
    ``expected_entry_id`` is the latest entry of the change the caller decided on (``None`` for no
    entry); if another writer moved the change meanwhile, :class:`StateMoved` rolls it all back.
    ``counts_as_apply`` is false for an applied state that restores, rather than makes, an apply
    (a failed undo of a marker change): the apply generation keying marker rows stays the same.
    """
    using = using or router.db_for_write(AuditEntry)
    # No savepoint: inside a caller's transaction, a refusal must roll all of it back.
    with transaction.atomic(using=using, savepoint=False):
        if fence is not None:
            fence.check(using=using)
        if change is not None and expected_entry_id is not UNCHECKED:
            current = ChangeState.objects.using(using).select_for_update().filter(change_id=change.id).values_list("entry_id", flat=True).first()
            if current != expected_entry_id:
                raise StateMoved(f"Change {change.id} moved (latest entry {current}, expected {expected_entry_id}).")
        change = change or ChangeRef(id="")
        entry = AuditEntry(
            event=event,
            environment=environment,
            change_id=change.id,
            stage=change.stage,
            order=change.order,
            target=change.target,
            state=state,
            checksum=change.checksum,
            transaction_strategy=change.transaction_strategy,
            recovery_strategy=change.recovery_strategy,
            run_id=run_id,
            actor=actor.name,
            actor_user_id=actor.user_id,
            host=actor.host,
            pid=actor.pid,
            fencing_token=fence.token if fence is not None else None,
            duration_ms=duration_ms,
            reason=redact(reason),
            error=redact(error),
            rollback_error=redact(rollback_error),
            details=redact_data({**(details or {}), **({"os_user": actor.os_user} if actor.os_user else {})}),
        )
        entry.save(using=using)
        if state:
            applied = state in APPLIED_STATES if counts_as_apply is None else counts_as_apply
            _project_state(entry, applied=applied, using=using)
        elif change.id and event == "change.checksum_accepted":
            ChangeState.objects.using(using).filter(change_id=change.id).update(checksum=change.checksum, entry=entry)
    return entry


def _project_state(entry: AuditEntry, *, applied: bool, using: str) -> None:
    applied = int(applied)
    fields = dict(
        state=entry.state,
        checksum=entry.checksum,
        entry=entry,
        run_id=entry.run_id,
        stage=entry.stage,
        order=entry.order,
        target=entry.target,
    )
    updated = ChangeState.objects.using(using).filter(change_id=entry.change_id).update(applied_count=F("applied_count") + applied, **fields)
    if not updated:
        ChangeState.objects.using(using).create(change_id=entry.change_id, applied_count=applied, **fields)


def change_states(*, using: str | None = None) -> dict[str, ChangeState]:
    """The latest state of every change that has one, in one query."""
    using = using or router.db_for_read(ChangeState)
    return {row.change_id: row for row in ChangeState.objects.using(using).all()}


__all__ = [
    "Actor",
    "ChangeRef",
    "ChangeStateName",
    "Fence",
    "FenceRefused",
    "StateMoved",
    "audit_record",
    "change_states",
]
