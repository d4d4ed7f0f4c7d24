"""Fault injection for crash tests: inert unless ``FLAMINGOCK_CRASH_AT`` or ``FLAMINGOCK_PAUSE_AT``
is set.

``FLAMINGOCK_CRASH_AT=<boundary>`` or ``<boundary>:<change id>`` makes the process send itself
SIGKILL when it reaches that boundary (for that change); ``FLAMINGOCK_PAUSE_AT`` sends SIGSTOP
instead, so a test can resume it with SIGCONT later (a paused holder). Boundaries, in execution
order:

- ``after_claim``: a worker claimed the queued run, before taking the lock;
- ``after_lock``: the lock is held, nothing written yet;
- ``after_started``: STARTED committed (marker and non-transactional strategies);
- ``before_apply``: about to call the change's apply (inside the target transaction if any);
- ``after_apply``: apply returned, the transaction not yet committed;
- ``before_commit``: shared transaction only: the change applied, its APPLIED entry about to commit
  with it (on PostgreSQL the entry and ``COMMIT`` are then sent together; on SQLite the entry is
  written, not committed);
- ``after_target_commit``: the target committed (marker strategy), APPLIED not yet written;
- ``after_applied``: APPLIED committed;
- ``before_release``: every change done, the lock not yet released;
- ``before_ack``: a worker finished the run, the task not yet acknowledged.
"""

import os
import signal

BOUNDARIES = (
    "after_claim",
    "after_lock",
    "after_started",
    "before_apply",
    "after_apply",
    "before_commit",
    "after_target_commit",
    "after_applied",
    "before_release",
    "before_ack",
)
_specs: dict[str, tuple[str, str]] = {}


def _parsed(variable: str) -> tuple[str, str]:
    if variable not in _specs:
        boundary, _, change_id = os.environ.get(variable, "").partition(":")
        _specs[variable] = (boundary, change_id)
    return _specs[variable]


def crashpoint(boundary: str, change_id: str = "") -> None:
    for variable, sig in (("FLAMINGOCK_CRASH_AT", signal.SIGKILL), ("FLAMINGOCK_PAUSE_AT", signal.SIGSTOP)):
        wanted, wanted_change = _parsed(variable)
        if wanted == boundary and (not wanted_change or wanted_change == change_id):
            os.kill(os.getpid(), sig)
