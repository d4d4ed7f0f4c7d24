"""Who sees what: the one visibility rule that the admin, the API, the command line and the
services all ask (docs/semantics.md §7).

A global permission covers every target system, an object permission (django-guardian) covers that
target system. Any of ``view``, ``operate`` or ``approve`` on a target system shows it, with its
changes, runs, requests, findings and audit entries; a model's global ``view`` permission shows
every row of that model. An inactive or anonymous user sees nothing.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from audit_app.models import AuditEntry
from changes_app.governance.permissions import APPROVE, OPERATE
from changes_app.models import ChangeRecord, ChangeRequest, Finding, Run, TargetSystem

VIEW_TARGET = "changes_app.view_targetsystem"
#: Any of these on a target system shows it (and its changes, runs, requests and audit entries).
SEES_TARGET = (VIEW_TARGET, OPERATE, APPROVE)


def _person(user) -> bool:
    return user is not None and user.is_authenticated and user.is_active


def targets_visible(user) -> QuerySet[TargetSystem]:
    if not _person(user):
        return TargetSystem.objects.none()
    return get_objects_for_user(user, SEES_TARGET, klass=TargetSystem, any_perm=True, accept_global_perms=True)


def target_names_visible(user) -> set[str]:
    return set(targets_visible(user).values_list("name", flat=True))


def target_names_seen(user, model_permission: str) -> set[str] | None:
    """The target systems whose rows of a model ``user`` sees: ``None`` (all of them) with the
    model's global ``model_permission``, otherwise the target systems ``user`` sees."""
    if not _person(user):
        return set()
    if user.has_perm(model_permission):
        return None
    return target_names_visible(user)


def changes_visible(user) -> QuerySet[ChangeRecord]:
    seen = target_names_seen(user, "changes_app.view_changerecord")
    return ChangeRecord.objects.all() if seen is None else ChangeRecord.objects.filter(target__in=seen)


def runs_visible(user, runs: QuerySet[Run] | None = None) -> QuerySet[Run]:
    """All runs with the global view permission; otherwise the user's own runs and the
    single-change runs of changes on target systems the user sees."""
    runs = Run.objects.all() if runs is None else runs
    seen = target_names_seen(user, "changes_app.view_run")
    if seen is None:
        return runs
    if not seen:
        return runs.filter(started_by=user) if _person(user) else runs.none()
    change_ids = ChangeRecord.objects.filter(target__in=seen).values_list("change_id", flat=True)
    return runs.filter(Q(started_by=user) | (~Q(change_id="") & Q(change_id__in=change_ids)))


def requests_visible(user, requests: QuerySet[ChangeRequest] | None = None) -> QuerySet[ChangeRequest]:
    """All requests with the global view permission; otherwise the user's own and those on
    target systems the user sees."""
    requests = ChangeRequest.objects.all() if requests is None else requests
    seen = target_names_seen(user, "changes_app.view_changerequest")
    if seen is None:
        return requests
    if not _person(user):
        return requests.none()
    return requests.filter(Q(target_system__name__in=seen) | Q(requester=user))


def audit_visible(user) -> QuerySet[AuditEntry]:
    """All entries with the global view permission; otherwise the entries about target systems the
    user sees, and the user's own."""
    entries = AuditEntry.objects.all()
    seen = target_names_seen(user, "audit_app.view_auditentry")
    if seen is None:
        return entries
    if not _person(user):
        return entries.none()
    return entries.filter(Q(target__in=list(seen), target__gt="") | Q(actor_user_id=user.pk))


def findings_visible(user) -> QuerySet[Finding]:
    """All findings with the global view permission; otherwise the findings on target systems the
    user sees (a finding about a run or the lock alone names no target system)."""
    seen = target_names_seen(user, "changes_app.view_finding")
    if seen is None:
        return Finding.objects.all()
    return Finding.objects.filter(target__in=list(seen), target__gt="")
