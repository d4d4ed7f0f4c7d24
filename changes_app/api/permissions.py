"""What an API user may do; what they may see is ``governance.visibility``'s one rule.

An object the user may not see is answered exactly like a missing one (404); a visible object the
user may not act on is a 403. The services check every action again against the object.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import permissions

from changes_app.governance.permissions import OPERATE, target_systems_for


def may_operate_somewhere(user) -> bool:
    return target_systems_for(user=user, permission=OPERATE).exists()


class MayStartRuns(permissions.BasePermission):
    """Starting a run needs the ``operate`` permission on at least one target system; the run
    itself stops a stage at the first change the user may not operate."""

    message = "You may not operate any target system."

    def has_permission(self, request, view):
        return request.method in permissions.SAFE_METHODS or may_operate_somewhere(request.user)


class MayReleaseLock(permissions.BasePermission):
    message = "You may not release the pipeline lock."

    def has_permission(self, request, view):
        return request.method in permissions.SAFE_METHODS or request.user.has_perm("changes_app.change_locklease")


class MayReadSchema(permissions.BasePermission):
    """The OpenAPI schema and Swagger UI: anyone outside production mode; in production mode only a
    logged-in user (session or token), since the schema maps the whole attack surface."""

    def has_permission(self, request, view):
        return not settings.FLAMINGOCK_PRODUCTION or bool(request.user and request.user.is_authenticated)
