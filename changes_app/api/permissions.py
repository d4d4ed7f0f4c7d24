"""What an API user may see and do, with one meaning everywhere (DOMAIN §6): a global permission
covers every target system, an object permission (django-guardian) covers that target system.

An object the user may not see is answered exactly like a missing one (404); a visible object the
user may not act on is a 403. The services check every action again against the object.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user
from rest_framework import permissions

from audit_app.models import AuditEntry

from ..governance import APPROVE, OPERATE, target_systems_for
from ..models import Finding, Run, TargetSystem

VIEW_TARGET = "changes_app.view_targetsystem"
#: Any of these on a target system shows it (and its changes, runs, requests and audit entries).
SEES_TARGET = (VIEW_TARGET, OPERATE, APPROVE)


def targets_visible(user) -> QuerySet[TargetSystem]:
    return get_objects_for_user(user, SEES_TARGET, klass=TargetSystem, any_perm=True, accept_global_perms=True)


def target_names_visible(user) -> set[str]:
    return set(targets_visible(user).values_list("name", flat=True))


def sees_all(user, model_permission: str) -> bool:
    return user.has_perm(model_permission)


def runs_visible(user, change_targets: dict[str, str]) -> QuerySet[Run]:
    """All runs with the global view permission; otherwise the user's own runs and the single-change
    runs of changes on target systems the user sees (``change_targets``: change id -> target)."""
    runs = Run.objects.all()
    if sees_all(user, "changes_app.view_run"):
        return runs
    visible = target_names_visible(user)
    changes = [change_id for change_id, target in change_targets.items() if target in visible]
    return runs.filter(Q(started_by=user) | Q(change_id__in=changes, change_id__gt=""))


def audit_visible(user) -> QuerySet[AuditEntry]:
    """All entries with the global view permission; otherwise the entries about target systems the
    user sees, and the user's own."""
    entries = AuditEntry.objects.all()
    if sees_all(user, "audit_app.view_auditentry"):
        return entries
    return entries.filter(Q(target__in=list(target_names_visible(user)), target__gt="") | Q(actor_user_id=user.pk))


def findings_visible(user) -> QuerySet[Finding]:
    """All findings with the global view permission; otherwise the findings on target systems the
    user sees (a finding about a run or the lock alone names no target system)."""
    findings = Finding.objects.all()
    if sees_all(user, "changes_app.view_finding"):
        return findings
    return findings.filter(target__in=list(target_names_visible(user)), target__gt="")


def may_operate_somewhere(user) -> bool:
    return target_systems_for(user=user, permission=OPERATE).exists()


class MayStartRuns(permissions.BasePermission):
    """Starting a run needs the ``operate`` permission on at least one target system; the run
    itself stops a stage at the first change the user may not operate (DOMAIN §6)."""

    message = "You may not operate any target system."

    def has_permission(self, request, view):
        return request.method in permissions.SAFE_METHODS or may_operate_somewhere(request.user)


class MayReleaseLock(permissions.BasePermission):
    message = "You may not release the pipeline lock."

    def has_permission(self, request, view):
        return request.method in permissions.SAFE_METHODS or request.user.has_perm("changes_app.change_locklease")
