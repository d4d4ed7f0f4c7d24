"""Who may act on what. One meaning everywhere: a global permission covers every target system,
an object permission (django-guardian) covers that target system."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model

from audit_app.services import Actor

from .models import TargetSystem

OPERATE = "changes_app.operate_targetsystem"
APPROVE = "changes_app.approve_targetsystem"


class PermissionRefused(Exception):
    """The actor may not do this; nothing was changed."""


def environment_protected(environment: str | None = None) -> bool:
    environment = environment or settings.FLAMINGOCK_ENVIRONMENT
    return environment in settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS


def actor_may(actor: Actor, permission: str, target_name: str) -> bool:
    """Whether ``actor`` holds ``permission`` on the target system ``target_name``."""
    if actor.user_id is None:
        # The local operator (unprotected environments only, see identity) or a service account.
        return actor.via == "schedule" or not environment_protected()
    user = get_user_model().objects.filter(pk=actor.user_id, is_active=True).first()
    if user is None:
        return False
    if user.has_perm(permission):
        return True
    target = TargetSystem.objects.filter(name=target_name).first()
    return target is not None and user.has_perm(permission, target)


def target_operate_check(actor: Actor, target_name: str) -> None:
    if not actor_may(actor, OPERATE, target_name):
        raise PermissionRefused(f"{actor.name} may not operate target system {target_name!r}")
