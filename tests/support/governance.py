"""Helpers for the governance tests (docs/semantics.md §9): people in roles with object permissions, policies,
and a snapshot of everything a refused action must leave as it was."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry, ChangeState
from audit_app.services import Actor
from changes_app.governance.identity import token_create
from changes_app.governance.roles import roles_ensure
from changes_app.models import Approval, ApprovalPolicy, ChangeRequest, RequestComment, Run, TargetSystem
from changes_app.services.catalogue import target_systems_sync


@dataclass(frozen=True)
class Person:
    user: object
    actor: Actor

    @property
    def token(self) -> str:
        """A new personal API token of this person (for the command line)."""
        _, key = token_create(user=self.user, name="tests", created_by="tests")
        return key


def person(
    username: str, *groups: str, operate: tuple[str, ...] = (), approve: tuple[str, ...] = (), superuser: bool = False, email: bool = True
) -> Person:
    """A user in ``groups`` (roles) with ``operate``/``approve`` object permissions on the named
    target systems."""
    roles_ensure()
    target_systems_sync()
    user = get_user_model().objects.create_user(username, email=f"{username}@example.com" if email else "", is_superuser=superuser, is_staff=True)
    user.groups.set(Group.objects.filter(name__in=groups))
    for name in operate:
        assign_perm("changes_app.operate_targetsystem", user, TargetSystem.objects.get(name=name))
    for name in approve:
        assign_perm("changes_app.approve_targetsystem", user, TargetSystem.objects.get(name=name))
    return Person(user, Actor(name=username, user_id=user.pk, via="ui"))


def policy(target: str, environment: str, required: int) -> ApprovalPolicy:
    """A policy row written directly (test setup; ``policy_set`` is tested on its own)."""
    target_systems_sync()
    row, _ = ApprovalPolicy.objects.update_or_create(
        target_system=TargetSystem.objects.get(name=target), environment=environment, defaults={"required_approvals": required}
    )
    return row


#: The evidence a refusal leaves of itself (docs/governance.md, Refusals): all a refusal may write.
REFUSAL_EVENTS = ("access.refused", "auth.login_failed")


def snapshot() -> dict:
    """What a refused action must not change: the audit head and count (its own refusal entry
    aside, tests/changes_app/test_refusals.py), the row counts, every change's latest state and
    every request's status."""
    entries = AuditEntry.objects.exclude(event__in=REFUSAL_EVENTS)
    last = entries.order_by("-id").values_list("id", flat=True).first()
    return {
        "audit_last_id": last,
        "audit_count": entries.count(),
        "runs": Run.objects.count(),
        "requests": sorted(ChangeRequest.objects.values_list("id", "status", "run_id")),
        "approvals": Approval.objects.count(),
        "comments": RequestComment.objects.count(),
        "policies": sorted(ApprovalPolicy.objects.values_list("target_system__name", "environment", "required_approvals")),
        "states": sorted(ChangeState.objects.values_list("change_id", "state", "entry_id", "checksum")),
    }


def chain_head() -> tuple[int, str] | None:
    """The chain's head (seq, hash) but for refusal entries: a refusal moves the real head by its own
    evidence only (the tests of docs/governance.md, Refusals, count those)."""
    return AuditEntry.objects.exclude(event__in=REFUSAL_EVENTS).exclude(seq=None).order_by("-seq").values_list("seq", "entry_hash").first()


def events(*, since: int | None = None, **filters) -> list[tuple[str, str]]:
    """(event, actor) of the entries after ``since``, in order."""
    entries = AuditEntry.objects.filter(**filters).order_by("id")
    if since is not None:
        entries = entries.filter(id__gt=since)
    return list(entries.values_list("event", "actor"))


def last_entry_id() -> int:
    return AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
