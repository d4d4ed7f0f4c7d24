"""Who may act on what. One meaning everywhere: a global permission covers every target system,
an object permission (django-guardian) covers that target system."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user, get_users_with_perms

from audit_app.services import Actor
from changes_app.models import TargetSystem

OPERATE = "changes_app.operate_targetsystem"
APPROVE = "changes_app.approve_targetsystem"


class PermissionRefused(Exception):
    """The actor may not do this; nothing was changed."""


class SelfDecisionRefused(PermissionRefused):
    """Nobody decides their own request, superusers included."""


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


def target_approve_check(actor: Actor, target_name: str) -> None:
    """Only a proven person decides: the local operator and service accounts never approve."""
    if actor.user_id is None:
        raise PermissionRefused(f"{actor.name} is not a proven user: deciding a request needs a login or a personal API token")
    if not actor_may(actor, APPROVE, target_name):
        raise PermissionRefused(f"{actor.name} may not approve requests on target system {target_name!r}")


def actor_user(actor: Actor):
    """The active user behind ``actor``, or ``None`` (local operator, service account, inactive)."""
    if actor.user_id is None:
        return None
    return get_user_model().objects.filter(pk=actor.user_id, is_active=True).first()


def target_systems_for(*, user, permission: str) -> QuerySet[TargetSystem]:
    """The target systems on which ``user`` holds ``permission``: all of them for a global holder."""
    return get_objects_for_user(user, permission, klass=TargetSystem, accept_global_perms=True)


def users_with(*, permission: str, target: TargetSystem) -> QuerySet:
    """Active users holding ``permission`` on ``target``: globally (directly, by a group, as
    superusers) or on that object (directly or by a group)."""
    app_label, codename = permission.split(".", 1)
    on_object = get_users_with_perms(target, with_group_users=True, only_with_perms_in=[codename]).values("pk")
    is_global = Q(user_permissions__codename=codename, user_permissions__content_type__app_label=app_label) | Q(
        groups__permissions__codename=codename, groups__permissions__content_type__app_label=app_label
    )
    return get_user_model().objects.filter(Q(is_superuser=True) | is_global | Q(pk__in=on_object), is_active=True).distinct().order_by("pk")
