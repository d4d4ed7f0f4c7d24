"""A change's ``verify`` run as a probe, outside any run: in a thread of its own, on a connection of
its own, given up after a timeout (the drift checks of a target, ``drift.checks``, and of a fleet's
members, ``fleets.drift``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

from changes_app.targets.base import TargetSystem


class ProbeContext:
    """The ``context`` dependency of a probe: like a run's, without a run (``member``: a fleet member's)."""

    def __init__(self, change_id: str, environment: str, member: str | None = None):
        self.run_id = None
        self.change_id = change_id
        self.environment = environment
        if member is not None:
            self.member = member
        self.idempotency_key = f"{change_id}:{member}:drift" if member is not None else f"{change_id}:drift"
        self.log = logging.getLogger(f"flamingock.change.{change_id}")


def verify_probe(change, system_make: Callable[[], TargetSystem], context: ProbeContext, *, timeout: float, name: str) -> tuple[bool | None, str]:
    """Run ``change``'s verify against the target ``system_make`` builds, in a thread; give up after
    ``timeout`` seconds. Returns (present, error): present is ``None`` when the probe raised or hung.
    The target is made in the thread: a hung probe keeps its connection to itself, never one a run shares."""
    outcome: dict[str, Any] = {}

    def probe() -> None:
        system = None
        try:
            system = system_make()
            with system.session(atomic=False) as session:
                outcome["present"] = bool(change.verify({**session, "context": context}))
        except BaseException as error:  # the probe's failure is a finding, never the check's crash
            outcome["error"] = f"{type(error).__name__}: {error}"
        finally:
            try:
                if system is not None:
                    system.close()
            finally:
                connections.close_all()

    thread = threading.Thread(target=probe, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"the probe did not answer within {timeout:g} seconds"
    if "error" in outcome:
        return None, outcome["error"]
    return outcome["present"], ""
