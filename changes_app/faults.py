"""Fault injection for crash tests: inert unless ``FLAMINGOCK_CRASH_AT`` is set.

``FLAMINGOCK_CRASH_AT=<boundary>`` or ``<boundary>:<change id>`` makes the process send itself
SIGKILL when it reaches that boundary (for that change). Boundaries, in execution order:

- ``after_lock``: the lock is held, nothing written yet;
- ``after_started``: STARTED committed (marker and non-transactional strategies);
- ``before_apply``: about to call the change's apply (inside the target transaction if any);
- ``after_apply``: apply returned, the transaction not yet committed;
- ``after_target_commit``: the target committed (marker strategy), APPLIED not yet written;
- ``after_applied``: APPLIED committed;
- ``before_release``: every change done, the lock not yet released.
"""

import os
import signal

BOUNDARIES = ("after_lock", "after_started", "before_apply", "after_apply", "after_target_commit", "after_applied", "before_release")
_spec: tuple[str, str] | None = None


def _parsed() -> tuple[str, str]:
    global _spec
    if _spec is None:
        boundary, _, change_id = os.environ.get("FLAMINGOCK_CRASH_AT", "").partition(":")
        _spec = (boundary, change_id)
    return _spec


def crashpoint(boundary: str, change_id: str = "") -> None:
    wanted, wanted_change = _parsed()
    if wanted == boundary and (not wanted_change or wanted_change == change_id):
        os.kill(os.getpid(), signal.SIGKILL)
