"""The permission state's version: a value in the shared cache that changes whenever a permission,
a group, a membership, an object permission, a user or a target system is saved or deleted, so
that what is kept per permission state (the admin's app list, ``admin.site``) is recomputed in
every process that shares the cache. Connected by ``ChangesAppConfig.ready``, beside the
permission audit's receivers (``permission_audit``)."""

from __future__ import annotations

import logging
import uuid

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from changes_app.models import TargetSystem

logger = logging.getLogger("flamingock.governance")

#: The shared cache's key of the permission state's version: a new random value whenever a permission,
#: a group, a membership, an object permission, a user or a target system is saved or deleted
#: (:func:`permissions_changed`), so that every process that shares the cache sees it.
PERMISSIONS_VERSION_KEY = "flamingock:admin:permissions-version"


def permissions_version() -> str | None:
    """The permission state's version (``None`` when the cache does not answer: nothing is kept)."""
    try:
        version = cache.get(PERMISSIONS_VERSION_KEY)
        if version is None:
            version = uuid.uuid4().hex
            if not cache.add(PERMISSIONS_VERSION_KEY, version, timeout=None):
                version = cache.get(PERMISSIONS_VERSION_KEY)
        return version
    except Exception:  # noqa: BLE001 - a cache that is down costs the app list, never the page
        logger.warning("the cache did not answer: what is kept per permission state is computed for this request", exc_info=True)
        return None


def permissions_changed(sender=None, using=None, **kwargs) -> None:
    """A receiver: the permission state changed, so what every process keeps for it is out of date. Said
    now and again when the transaction commits (a list recomputed in between read the old state)."""

    def bump():
        try:
            cache.set(PERMISSIONS_VERSION_KEY, uuid.uuid4().hex, timeout=None)
        except Exception:  # noqa: BLE001 - the change itself must not fail; what is kept expires (admin.site.APP_LIST_TTL)
            logger.warning("the cache did not answer: what is kept per permission state stays until it expires", exc_info=True)

    bump()
    transaction.on_commit(bump, using=using)


def _user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    # A sign-in saves last_login: not a permission change. A new user may reuse an id (SQLite after a rollback).
    if created or update_fields is None or set(update_fields) - {"last_login"}:
        permissions_changed(sender=sender, **kwargs)


def receivers_connect() -> None:
    """What changes the permission state (idempotent)."""
    User = get_user_model()
    for through in (User.groups.through, User.user_permissions.through, Group.permissions.through):
        m2m_changed.connect(permissions_changed, sender=through, dispatch_uid=f"flamingock.app_list.{through._meta.label_lower}")
    post_save.connect(_user_saved, sender=User, dispatch_uid="flamingock.app_list.user.save")
    post_delete.connect(permissions_changed, sender=User, dispatch_uid="flamingock.app_list.user.delete")
    for model in (Group, Permission, get_user_obj_perms_model(), get_group_obj_perms_model(), TargetSystem):
        for signal, name in ((post_save, "save"), (post_delete, "delete")):
            signal.connect(permissions_changed, sender=model, dispatch_uid=f"flamingock.app_list.{model._meta.label_lower}.{name}")


receivers_connect()
