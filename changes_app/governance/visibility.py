"""Who sees what: the one visibility rule that the admin, the API, the command line and the
services all ask (docs/semantics.md §7).

A global permission covers every target system, an object permission (django-guardian) covers that
target system. Any of ``view``, ``operate`` or ``approve`` on a target system shows it, with its
changes, runs, requests, findings and audit entries; a model's global ``view`` permission shows
every row of that model. An inactive or anonymous user sees nothing.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable

from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from audit_app.models import AuditEntry, ChangeState
from audit_app.services import Actor
from changes_app.governance.permissions import APPROVE, OPERATE, actor_user, environment_protected
from changes_app.models import ChangeRecord, ChangeRequest, Finding, Run, TargetSystem

VIEW_TARGET = "changes_app.view_targetsystem"
VIEW_CHANGE = "changes_app.view_changerecord"
#: What a run's status reason shows in place of the id of a change the viewer cannot see.
HIDDEN_CHANGE = "[a change you cannot see]"
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


# -- the changes inside a run ------------------------------------------------------------------------


def change_targets_seen(user) -> set[str] | None:
    """The target systems whose changes ``user`` sees (``None``: all of them)."""
    return target_names_seen(user, VIEW_CHANGE)


def actor_change_targets_seen(actor: Actor) -> set[str] | None:
    """:func:`change_targets_seen` for an actor: the local operator of an unprotected environment
    (the command line without a token) sees every change, as every other list of the command line."""
    if actor.user_id is None:
        return None if not environment_protected() else set()
    return change_targets_seen(actor_user(actor))


def change_ids_hidden(change_ids: Iterable[str], seen: set[str] | None) -> set[str]:
    """Of ``change_ids``, those a viewer who sees the changes of ``seen`` cannot see; a change whose
    target system is unknown is hidden too (closed, not open)."""
    wanted = set(change_ids) - {""}
    if seen is None or not wanted:
        return set()
    targets = dict(ChangeState.objects.filter(change_id__in=wanted).values_list("change_id", "target"))
    targets.update(ChangeRecord.objects.filter(change_id__in=wanted).values_list("change_id", "target"))
    return {change_id for change_id in wanted if targets.get(change_id) not in seen}


def run_shown(run: Run, seen: set[str] | None) -> Run:
    """``run`` as a viewer who sees the changes of the target systems ``seen`` (``None``: all) may
    see it (API, admin, command line): the results of other changes are left out and counted in
    ``hidden_results``, ``counts`` are those of the results shown, and the ids of hidden changes are
    masked in the status reason and the current change. A copy: never saved."""
    shown = copy.copy(run)
    shown.hidden_results = 0
    results = run.results or []
    hidden = change_ids_hidden([row.get("change_id", "") for row in results] + [run.current_change or ""], seen)
    if not hidden:
        return shown
    shown.results = [row for row in results if row.get("change_id") not in hidden]
    shown.hidden_results = len(results) - len(shown.results)
    shown.counts = dict(Counter(row.get("result") for row in shown.results))
    shown.current_change = "" if run.current_change in hidden else run.current_change
    reason = run.status_reason or ""
    for change_id in sorted(hidden, key=len, reverse=True):  # longest first: an id inside another stays whole
        reason = reason.replace(change_id, HIDDEN_CHANGE)
    shown.status_reason = reason
    return shown
