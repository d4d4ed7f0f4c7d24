"""The JSON of every object the API returns and the command line prints with ``--json``: one plain
function per object, giving a dict of JSON values exactly as the API renders it.

The API's serializers (``changes_app.api.serializers``) declare the fields for the OpenAPI schema
and return these dicts, so the two interfaces cannot diverge; the command line calls them directly,
so that it starts without Django REST framework's serializers. Values are formatted as DRF formats
them: a date-time in the current time zone as ISO 8601 with ``Z`` for UTC, a UUID as its text.

A function of the plan takes an optional ``targets`` set: the target systems the reader sees
(``None``: all of them), so the API's visibility rule and the command line agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Count, QuerySet
from django.utils import timezone

from changes_app.locks.base import Holder
from changes_app.models import ChangeRequest, EvidencePack, Finding, FleetMemberRun, FleetRun, Run, TargetSystem
from changes_app.pipeline.plan import Action, Plan, PlanItem

if TYPE_CHECKING:
    from changes_app.services.plan import Validation
    from changes_app.services.requests import Submission
    from changes_app.services.reviews import RequestReview

#: The lock holder's fields, in the order the API gives them.
HOLDER_FIELDS = ("name", "run_id", "holder", "host", "pid", "token", "since", "expires_at", "expired")
#: An audit entry's fields, in the order the API gives them; each is a column of the entry's row.
AUDIT_ENTRY_FIELDS = (
    "id", "seq", "event", "created_at", "environment", "change_id", "stage", "order", "target", "state",
    "checksum", "transaction_strategy", "recovery_strategy", "run_id", "actor", "host", "pid",
    "fencing_token", "duration_ms", "reason", "error", "rollback_error", "details", "prev_hash", "entry_hash",
)  # fmt: skip


# -- values ------------------------------------------------------------------------------------------


def zone() -> dt.tzinfo | None:
    """The time zone date-times are shown in, as DRF chooses it: the current one, or none without USE_TZ."""
    return timezone.get_current_timezone() if settings.USE_TZ else None


def datetime_text(value: dt.datetime | None, in_zone: dt.tzinfo | None = None) -> str | None:
    """A date-time as DRF's ``DateTimeField`` gives it: in ``in_zone`` (default: :func:`zone`), ISO
    8601, ``Z`` for UTC; ``None`` stays ``None``."""
    if not value:
        return None
    if isinstance(value, str):
        return value
    in_zone = in_zone or zone()
    if in_zone is not None:
        value = value.astimezone(in_zone) if timezone.is_aware(value) else timezone.make_aware(value, in_zone)
    elif timezone.is_aware(value):
        value = timezone.make_naive(value, dt.UTC)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _texts(values: Iterable[Any]) -> list[str | None]:
    return [_text(value) for value in values]


def _seen(targets: set[str] | None, target: str) -> bool:
    return targets is None or target in targets


# -- target systems, changes, plans, issues ------------------------------------------------------------


def target_system_data(system: TargetSystem) -> dict[str, Any]:
    zone_now = zone()
    return {
        "name": system.name,
        "kind": system.kind,
        "description": system.description,
        "configuration": system.configuration,
        "owner_team": system.owner_team,
        "created_at": datetime_text(system.created_at, zone_now),
        "retired_at": datetime_text(system.retired_at, zone_now),
    }


def change_data(item: PlanItem) -> dict[str, Any]:
    """A change as the plan sees it: its definition, latest state and next action."""
    change = item.change
    return {
        **item.as_dict(),
        "author": change.author,
        "description": change.description,
        "kind": change.kind,
        "transactional": change.transactional,
        "recovery": getattr(change.recovery, "value", change.recovery),
        "has_rollback": change.has_rollback,
        "has_verify": change.has_verify,
    }


def plan_data(plan: Plan, targets: set[str] | None = None) -> dict[str, Any]:
    """The plan by stage, as the API shows it; a stage with no visible change is left out."""
    stages = []
    for stage in plan.stages:
        items = [change_data(item) for item in stage.items if _seen(targets, item.change.target)]
        if items:
            blocker = stage.blocked_by
            blocked_by = blocker.change.id if blocker and _seen(targets, blocker.change.target) else None
            stages.append({"name": stage.name, "blocked_by": blocked_by, "items": items})
    missing = [row.change_id for row in plan.missing if _seen(targets, row.target)]
    return {"environment": plan.environment, "digest": plan.digest, "stages": stages, "missing": missing, "notices": plan.notices}


def plan_list_data(plan: Plan, targets: set[str] | None = None) -> dict[str, Any]:
    """The plan as one list in pipeline order, as the command line prints it: the API's change
    fields, the missing changes with their stage and state, and the count of each next action."""
    items = [item for item in plan.items if _seen(targets, item.change.target)]
    summary: dict[str, int] = {}
    for item in items:
        summary[item.action.value] = summary.get(item.action.value, 0) + 1
    return {
        "environment": plan.environment,
        "digest": plan.digest,
        "changes": [change_data(item) for item in items],
        "missing_from_code": [{"id": row.change_id, "stage": row.stage, "state": row.state} for row in plan.missing if _seen(targets, row.target)],
        "summary": {action.value: summary[action.value] for action in Action if action.value in summary},
        "notices": plan.notices,
    }


def issue_data(details: Mapping[str, Any]) -> dict[str, Any]:
    """An issue (``pipeline.guidance.issue_details``): the change, its state, the last error and the guidance."""
    return {
        "id": str(details["id"]),
        "stage": str(details["stage"]),
        "order": str(details["order"]),
        "target": str(details["target"]),
        "strategy": str(details["strategy"]),
        "latest_state": _text(details["latest_state"]),
        "next_action": str(details["next_action"]),
        "reason": str(details["reason"]),
        "error": str(details["error"]),
        "rollback_error": str(details["rollback_error"]),
        "error_entry": None if details["error_entry"] is None else int(details["error_entry"]),
        "guidance": _texts(details["guidance"]),
    }


# -- runs and requests ---------------------------------------------------------------------------------


def run_data(run: Run) -> dict[str, Any]:
    """A run; pass it through ``governance.visibility.run_shown`` first, so that a viewer gets only
    the results of changes they may see and ``hidden_results`` counts the others."""
    zone_now = zone()
    return {
        "id": str(run.id),
        "kind": run.kind,
        "status": run.status,
        "status_reason": run.status_reason,
        "source": run.source,
        "environment": run.environment,
        "actor": run.actor,
        "change_id": run.change_id,
        "reason": run.reason,
        "created_at": datetime_text(run.created_at, zone_now),
        "started_at": datetime_text(run.started_at, zone_now),
        "finished_at": datetime_text(run.finished_at, zone_now),
        "heartbeat_at": datetime_text(run.heartbeat_at, zone_now),
        "cancel_requested_at": datetime_text(run.cancel_requested_at, zone_now),
        "cancel_requested_by": run.cancel_requested_by,
        "progress": {"done": run.progress_done, "total": run.progress_total, "current_change": run.current_change},
        "counts": run.counts,
        "results": run.results,
        "hidden_results": hidden_results(run),
    }


def hidden_results(run: Run) -> int:
    """How many results of ``run`` the viewer cannot see (set by ``visibility.run_shown``)."""
    return getattr(run, "hidden_results", 0)


def run_outcome_data(run: Run) -> dict[str, Any]:
    """A run the command line just executed: its outcome and per-change results. Its names are the
    command line's established ones (``run_id``; ``reason`` is why the run ended as it did, the
    API's ``status_reason``), kept because scripts and deploy gates read them."""
    zone_now = zone()
    return {
        "run_id": str(run.id),
        "kind": run.kind,
        "status": run.status,
        "reason": run.status_reason,
        "environment": run.environment,
        "actor": run.actor,
        "counts": run.counts,
        "results": run.results,
        "hidden_results": hidden_results(run),
        "started_at": datetime_text(run.started_at, zone_now),
        "finished_at": datetime_text(run.finished_at, zone_now),
    }


def request_data(request: ChangeRequest) -> dict[str, Any]:
    """A request with its decisions (prefetch ``approvals`` to read many without a query each)."""
    zone_now = zone()
    decisions = list(request.approvals.all())
    return {
        "id": request.pk,
        "kind": request.kind,
        "change_id": request.change_id,
        "checksum": request.checksum,
        "recorded_checksum": request.recorded_checksum,
        "environment": request.environment,
        "target": request.target_system.name,
        "status": request.status,
        "status_reason": request.status_reason,
        "requester": request.requester_name,
        "reason": request.reason,
        "source": request.source,
        "required_approvals": request.required_approvals,
        "approved_by": [d.approver_name for d in decisions if d.decision == "APPROVE"],
        "rejected_by": [d.approver_name for d in decisions if d.decision == "REJECT"],
        "created_at": datetime_text(request.created_at, zone_now),
        "decided_at": datetime_text(request.decided_at, zone_now),
        "expires_at": datetime_text(request.expires_at, zone_now),
        "run_id": _text(request.run_id),
        # Break-glass (docs/break-glass.md): the use that approved it, or the use a REVIEW reviews.
        "break_glass": request.break_glass,
        "incident": request.incident,
        "reviewed_request_id": request.reviewed_request_id,
        "due_at": datetime_text(request.due_at, zone_now),
        "overdue": request.overdue_at is not None,
    }


def request_review_data(review: RequestReview) -> dict[str, Any]:
    """A request as an approver decides it (``services.reviews``): the request, what will run, the
    undo cascade, the diff since the request, the approval gate with the eligible approvers, and
    whether the reader may decide it now (and why not)."""
    return {**request_data(review.request), **review.as_dict()}


def submission_data(submission: Submission) -> dict[str, Any]:
    """A request awaiting approval, a request approved and executed, or (where nothing governs the
    target) the run that performed the action directly."""
    return {
        "awaiting_approval": submission.awaiting_approval,
        "request": request_data(submission.request) if submission.request is not None else None,
        "run": run_data(submission.run) if submission.run is not None else None,
    }


# -- findings, the lock, the trail, the deploy gate ----------------------------------------------------


def adoption_data(status) -> dict[str, Any]:
    """A database alias's adoption (``services.adoption.AdoptionStatus``): whether it is needed, what
    it would record or recorded, and who adopted it when."""
    adoption = status.adoption
    return {
        "alias": status.alias,
        "target": status.target,
        "adoption_required": status.required,
        "adopted": adoption is not None,
        "adopted_at": datetime_text(adoption.adopted_at, zone()) if adoption is not None else None,
        "adopted_by": adoption.adopted_by_name if adoption is not None else "",
        "reason": adoption.reason if adoption is not None else "",
        "request_id": adoption.request_id if adoption is not None else None,
        "migrations": adoption.migrations if adoption is not None else status.recorded,
    }


def finding_data(finding: Finding) -> dict[str, Any]:
    zone_now = zone()
    return {
        "id": finding.pk,
        "check_name": finding.check_name,
        "kind": finding.kind,
        "status": finding.status,
        "environment": finding.environment,
        "change_id": finding.change_id,
        "target": finding.target,
        "run_id": _text(finding.run_id),
        "lock_name": finding.lock_name,
        "member": finding.member,
        "summary": finding.summary,
        "first_seen": datetime_text(finding.first_seen, zone_now),
        "last_seen": datetime_text(finding.last_seen, zone_now),
        "times_seen": finding.times_seen,
        "last_evidence": finding.last_evidence,
        "status_changed_at": datetime_text(finding.status_changed_at, zone_now),
        "status_by": finding.status_by,
        "status_reason": finding.status_reason,
        "fingerprint": finding.fingerprint,
    }


def lock_holder_data(holder: Holder) -> dict[str, Any]:
    """Who holds the lock, with its times as the lock contract gives them (``Holder.as_dict``)."""
    return {**holder.as_dict(), "run_id": _text(holder.run_id)}


def lock_data(holder: Holder | None) -> dict[str, Any]:
    """The pipeline lock: whether it is held and, flat, by whom (every holder field null when free)."""
    if holder is None:
        return {"held": False, **dict.fromkeys(HOLDER_FIELDS[:-1]), "expired": False}
    return {"held": True, **lock_holder_data(holder)}


def audit_entry_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Audit entries from their rows (mappings of :data:`AUDIT_ENTRY_FIELDS`, as ``.values()``
    gives them); the time zone is looked up once for them all, since a page holds hundreds."""
    zone_now = zone()
    return [
        {
            "id": row["id"],
            "seq": row["seq"],
            "event": row["event"],
            "created_at": datetime_text(row["created_at"], zone_now),
            "environment": row["environment"],
            "change_id": row["change_id"],
            "stage": row["stage"],
            "order": row["order"],
            "target": row["target"],
            "state": row["state"],
            "checksum": row["checksum"],
            "transaction_strategy": row["transaction_strategy"],
            "recovery_strategy": row["recovery_strategy"],
            "run_id": _text(row["run_id"]),
            "actor": row["actor"],
            "host": row["host"],
            "pid": row["pid"],
            "fencing_token": row["fencing_token"],
            "duration_ms": None if row["duration_ms"] is None else float(row["duration_ms"]),
            "reason": row["reason"],
            "error": row["error"],
            "rollback_error": row["rollback_error"],
            "details": row["details"],
            "prev_hash": row["prev_hash"],
            "entry_hash": row["entry_hash"],
        }
        for row in rows
    ]


def audit_entry_data(entry) -> dict[str, Any]:
    """One audit entry (an ``audit_app.models.AuditEntry``)."""
    return audit_entry_rows([{name: getattr(entry, name) for name in AUDIT_ENTRY_FIELDS}])[0]


def validation_data(verdict: Validation) -> dict[str, Any]:
    """The deploy gate: what stops a deploy, and the exit code ``flamingock validate`` exits with."""
    return {
        "valid": verdict.valid,
        "exit_code": int(verdict.exit_code),
        "exit_name": verdict.exit_name,
        "exit_reason": verdict.exit_reason,
        "checksum_drift": _texts(verdict.checksum_drift),
        "missing_from_code": _texts(verdict.missing_from_code),
        "blocked": _texts(verdict.blocked),
        "awaiting_approval": _texts(verdict.awaiting_approval),
        "pending": _texts(verdict.pending),
        "findings": [finding_data(finding) for finding in verdict.findings],
    }


def evidence_pack_data(pack: EvidencePack) -> dict[str, Any]:
    """An evidence pack: its scope, period, progress and, once done, its manifest's hash and results."""
    return {
        "id": pack.pk,
        "status": pack.status,
        "requested_by": pack.requested_by,
        "requested_at": datetime_text(pack.requested_at),
        "environment": pack.environment,
        "targets": list(pack.targets),
        "members": list(pack.members),
        "from": datetime_text(pack.period_from),
        "to": datetime_text(pack.period_to),
        "progress": pack.progress,
        "total": pack.total,
        "started_at": datetime_text(pack.started_at),
        "finished_at": datetime_text(pack.finished_at),
        "manifest_sha256": pack.manifest_sha256 or None,
        "results": dict(pack.results),
        "error": pack.error or None,
    }


#: Members a fleet run's representation lists at most (``offset`` pages through the rest).
FLEET_MEMBERS_PAGE = 100


def fleet_run_data(
    fleet: FleetRun, members: Iterable[FleetMemberRun] | None = None, *, offset: int = 0, limit: int = FLEET_MEMBERS_PAGE
) -> dict[str, Any]:
    """A fleet run: its policy, where it stands, its members by status (counted in SQL) and one page
    of its members (``members``: of those only, e.g. a filter's), by wave then name. A fixed number
    of queries whatever the fleet's size."""
    zone_now = zone()
    rows = FleetMemberRun.objects.filter(fleet_run=fleet).values("status").annotate(n=Count("id")).order_by()
    counts = {row["status"]: row["n"] for row in rows}
    chosen = FleetMemberRun.objects.filter(fleet_run=fleet) if members is None else members
    if isinstance(chosen, QuerySet):
        chosen = chosen.order_by("wave", "member")
        total = sum(counts.values()) if members is None else chosen.count()
        listed = list(chosen[offset : offset + limit])
    else:
        chosen = sorted(chosen, key=lambda member: (member.wave, member.member))
        total, listed = len(chosen), chosen[offset : offset + limit]
    return {
        "id": str(fleet.pk),
        "target": fleet.target,
        "environment": fleet.environment,
        "status": fleet.status,
        "result": fleet.result or None,
        "status_reason": fleet.status_reason,
        "actor": fleet.actor,
        "source": fleet.source,
        "policy": {"canary": fleet.canary, "wave_size": fleet.wave_size, "concurrency": fleet.concurrency, "max_failures": fleet.max_failures},
        "wave": fleet.wave,
        "halted": fleet.halted,
        "checksums": fleet.checksums,
        "created_at": datetime_text(fleet.created_at, zone_now),
        "finished_at": datetime_text(fleet.finished_at, zone_now),
        "cancel_requested_at": datetime_text(fleet.cancel_requested_at, zone_now),
        "cancel_requested_by": fleet.cancel_requested_by,
        # Its governed actions (docs/fleet.md, "Governance"): retry requests and the approval after the canary.
        "requests": [
            {"id": pk, "kind": kind, "status": status, "required_approvals": required}
            for pk, kind, status, required in ChangeRequest.objects.filter(change_id=f"fleet:{fleet.pk}")
            .order_by("id")
            .values_list("pk", "kind", "status", "required_approvals")
        ],
        "counts": counts,
        "members_page": {"offset": offset, "limit": limit, "total": total},
        "members": [
            {
                "member": member.member,
                "wave": member.wave,
                "status": member.status,
                "run_id": str(member.run_id) if member.run_id else None,
                "attempts": member.attempts,
                "reason": member.reason,
            }
            for member in listed
        ],
    }
