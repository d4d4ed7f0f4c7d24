"""The pipeline lock as people see it: who holds it, and a force-release that is audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from audit_app.services import Actor, audit_record
from changes_app.conf import current_environment
from changes_app.errors import ActionRefused, require_reason
from changes_app.governance.permissions import PermissionRefused
from changes_app.governance.refusals import refusals_recorded
from changes_app.locks.backends import lock_backend_shared


def lock_status():
    return lock_backend_shared().holder()


@refusals_recorded("lock.force_release", object="pipeline lock")
def lock_force_release(*, actor: Actor, reason: str):
    reason = require_reason(reason)
    if actor.user_id is not None:
        user = get_user_model().objects.get(pk=actor.user_id)
        if not user.has_perm("changes_app.change_locklease"):
            raise PermissionRefused(f"{actor.name} may not release the pipeline lock")
    holder = lock_backend_shared().force_release()
    if holder is None:
        raise ActionRefused("the lock is not held")
    audit_record(event="lock.force_released", actor=actor, environment=current_environment(), reason=reason, details=holder.as_dict())
    return holder
