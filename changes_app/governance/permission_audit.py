"""Changes to group membership, permissions (global and per object) and superuser status are
audited like everything else (docs/semantics.md §9, §11): ``permission.granted`` and ``permission.revoked``.

Signals only translate what changed into entries, in the transaction of the change itself; who
made it is the user of the admin request being served (``ActingUserMiddleware``), the actor a
caller names with :func:`acting_as`, or ``system``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from audit_app.services import Actor, audit_record

SYSTEM = Actor(name="system", via="system")

_acting: ContextVar[Actor | None] = ContextVar("flamingock_acting", default=None)


@contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    """Attribute the permission changes made inside the block to ``actor``."""
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


def acting_actor() -> Actor:
    """Who the changes made now are attributed to: see :func:`acting_as`."""
    return _acting.get() or SYSTEM


class ActingUserMiddleware:
    """Makes the logged-in user the actor of the permission changes a request makes."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return self.get_response(request)
        with acting_as(Actor(name=user.get_username(), user_id=user.pk, via="ui")):
            return self.get_response(request)


def _record(granted: bool, **details) -> None:
    audit_record(
        event="permission.granted" if granted else "permission.revoked",
        actor=_acting.get() or SYSTEM,
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        details=details,
    )


def _permission_name(permission) -> str:
    return f"{permission.content_type.app_label}.{permission.codename}"


# -- many-to-many: group membership, user permissions, group permissions ---------------------------


def _relations() -> dict:
    """through model -> (what it grants, source field, target field, how to describe each side)."""
    User = get_user_model()

    def username(user):
        return {"user": user.get_username()}

    def group(group):
        return {"group": group.name}

    def permission(permission):
        return {"permission": _permission_name(permission)}

    return {
        User.groups.through: ("group_membership", "user", User, username, "group", Group, group),
        User.user_permissions.through: ("permission", "user", User, username, "permission", Permission, permission),
        Group.permissions.through: ("group_permission", "group", Group, group, "permission", Permission, permission),
    }


def _pairs(sender, instance, reverse: bool, pk_set, using: str) -> list[tuple[int, int]]:
    """(source pk, target pk) of the rows of ``sender`` that the change touches and that exist."""
    _, source, _, _, target, _, _ = _relations()[sender]
    own, other = (target, source) if reverse else (source, target)
    rows = sender._default_manager.using(using).filter(**{f"{own}_id": instance.pk})
    if pk_set is not None:
        rows = rows.filter(**{f"{other}_id__in": pk_set})
    return list(rows.values_list(f"{source}_id", f"{target}_id"))


def _m2m_changed(sender, instance, action, reverse, model, pk_set, using, **kwargs):
    if action in ("pre_remove", "pre_clear"):
        # Only rows that exist are revoked: remove() is given ids whether or not they are there.
        instance._flamingock_removing = _pairs(sender, instance, reverse, pk_set, using)
        return
    if action == "post_add":
        pairs = [(pk, instance.pk) if reverse else (instance.pk, pk) for pk in pk_set or ()]
        granted = True
    elif action in ("post_remove", "post_clear"):
        pairs = getattr(instance, "_flamingock_removing", [])
        instance._flamingock_removing = []
        granted = False
    else:
        return
    kind, _, source_model, describe_source, _, target_model, describe_target = _relations()[sender]
    sources = source_model._default_manager.using(using).in_bulk({source for source, _ in pairs})
    targets = target_model._default_manager.using(using).in_bulk({target for _, target in pairs})
    for source, target in pairs:
        if source in sources and target in targets:
            _record(granted, kind=kind, **describe_source(sources[source]), **describe_target(targets[target]))


# -- object permissions (django-guardian) ----------------------------------------------------------


def _object_permission_details(row, holder: dict) -> dict:
    content_type = row.content_type
    model = content_type.model_class()
    # The object may be going away with the permission (a cascade).
    target = model._default_manager.filter(pk=row.object_pk).first() if model is not None else None
    return {
        "kind": "object_permission",
        **holder,
        "permission": _permission_name(row.permission),
        "object_type": f"{content_type.app_label}.{content_type.model}",
        "object_pk": str(row.object_pk),
        "object": str(target) if target is not None else "",
    }


def _holder(row) -> dict:
    """The user or group of an object permission row, named even while it is being deleted."""
    if hasattr(row, "user_id"):
        User = get_user_model()
        name = User._default_manager.filter(pk=row.user_id).values_list(User.USERNAME_FIELD, flat=True).first()
        return {"user": name or f"user #{row.user_id}"}
    name = Group.objects.filter(pk=row.group_id).values_list("name", flat=True).first()
    return {"group": name or f"group #{row.group_id}"}


def _object_permission_saved(sender, instance, created, **kwargs):
    if created:
        _record(True, **_object_permission_details(instance, _holder(instance)))


def _object_permission_deleted(sender, instance, **kwargs):
    _record(False, **_object_permission_details(instance, _holder(instance)))


# -- superuser status ------------------------------------------------------------------------------


def _user_saving(sender, instance, update_fields=None, **kwargs):
    if instance.pk is None or (update_fields is not None and "is_superuser" not in update_fields):
        instance._flamingock_was_superuser = None
        return
    instance._flamingock_was_superuser = sender._default_manager.filter(pk=instance.pk).values_list("is_superuser", flat=True).first()


def _user_saved(sender, instance, created, **kwargs):
    was = getattr(instance, "_flamingock_was_superuser", None)
    instance._flamingock_was_superuser = None
    if created:
        if instance.is_superuser:
            _record(True, kind="superuser", user=instance.get_username())
    elif was is not None and was != instance.is_superuser:
        _record(instance.is_superuser, kind="superuser", user=instance.get_username())


def receivers_connect() -> None:
    """Connect the receivers (``AppConfig.ready``); connecting twice is harmless."""
    from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

    for through in _relations():
        m2m_changed.connect(_m2m_changed, sender=through, dispatch_uid=f"flamingock-permission-audit-{through._meta.label}")
    for model in (get_user_obj_perms_model(), get_group_obj_perms_model()):
        post_save.connect(_object_permission_saved, sender=model, dispatch_uid=f"flamingock-permission-audit-saved-{model._meta.label}")
        post_delete.connect(_object_permission_deleted, sender=model, dispatch_uid=f"flamingock-permission-audit-deleted-{model._meta.label}")
    User = get_user_model()
    pre_save.connect(_user_saving, sender=User, dispatch_uid="flamingock-user-saving")
    post_save.connect(_user_saved, sender=User, dispatch_uid="flamingock-user-saved")
