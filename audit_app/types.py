"""What the writer's callers pass (who acts, which change, which fence) and what it raises."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

#: FLAMINGOCK_HOSTNAME names the host in the trail where the OS name is not telling (containers).
HOSTNAME = os.environ.get("FLAMINGOCK_HOSTNAME") or socket.gethostname()


class FenceRefused(Exception):
    """The run's fencing token is no longer the newest: another holder took the lock."""


class StateMoved(Exception):
    """The change's latest state is not the one the writer's decision was based on."""


#: Where an operator finds what to do when the trail is closed (docs/compliance.md).
QUARANTINE_STEPS = "docs/compliance.md, 'When verification fails: quarantine'"


class TrailClosed(Exception):
    """The trail's next sequence number is taken by a row the one writer did not write (inserted
    around it): the trail fails closed. The refused entry writes nothing, and so does every later
    one, until an operator moves the foreign row aside (``flamingock audit quarantine``)."""

    def __init__(self, seq: int | None, event: str):
        self.seq, self.event = seq, event
        taken = f"entry #{seq}" if seq is not None else "the next entry's place"
        super().__init__(
            f"the audit trail is closed: {taken} is taken by a row the writer did not write, so the {event} entry was refused "
            f"and nothing was written. Every write is refused until an operator follows the quarantine steps ({QUARANTINE_STEPS}: "
            "flamingock audit verify, then flamingock audit quarantine --reason TEXT)."
        )


class HashMismatch(AssertionError):
    """The database hashed an entry differently from chain version 1 (a server that formats the
    hash input otherwise). The message says whether the entry was written (it committed with its
    statement) or not."""


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
