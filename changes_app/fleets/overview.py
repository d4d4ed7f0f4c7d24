"""What a fleet run looks like to a person (the admin's fleet view and ``GET /api/v1/fleets/<id>/matrix/``):
its waves' progress, a members × changes matrix of latest states with counts per change, a filter of
its members, and each failed or blocked member's issues with their guidance. Read-only.

Every function reads a fixed number of queries whatever the fleet's size: counts are computed in
SQL, and only one page of members is read row by row (docs/fleet.md, "The fleet view").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from audit_app.models import MemberChangeState
from changes_app.errors import ActionRefused, typed_text
from changes_app.fleets.executor import group_pipeline
from changes_app.fleets.groups import GroupUnknown, member_target
from changes_app.governance.visibility import change_targets_seen
from changes_app.models import FleetMemberRun, FleetRun, Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.guidance import issue_guidance
from changes_app.pipeline.plan import HOLDING, PlanItem, resolve

Status = FleetMemberRun.Status
#: A member whose child run ended on one of these was stopped by something that needs a person or
#: another run (a stage held, an approval, the member's lock), not by an error of its own.
RUN_BLOCKED = (Run.Status.BLOCKED, Run.Status.AWAITING_APPROVAL, Run.Status.LOCKED)
_BLOCKED = Q(status=Status.FAILED, run__status__in=RUN_BLOCKED)
#: The member filter: its name (``?status=``) -> which members.
MEMBER_FILTERS: dict[str, Q] = {
    "attention": Q(status=Status.FAILED),
    "failed": Q(status=Status.FAILED) & ~_BLOCKED,
    "blocked": _BLOCKED,
    "not_started": Q(status=Status.NOT_STARTED),
    "running": Q(status__in=(Status.QUEUED, Status.RUNNING)),
    "pending": Q(status=Status.PENDING),
    "succeeded": Q(status=Status.SUCCEEDED),
}
#: A member has finished its part in this fleet run.
FINISHED = (Status.SUCCEEDED, Status.FAILED)
#: Results of a change in a member's run that need nothing from anyone.
RESULTS_FINE = frozenset({"APPLIED", "ALREADY_APPLIED", "RECONCILED", "SKIP", "NOT_APPLICABLE", "NOT_REACHED"})
MEMBERS_PER_PAGE = 100


class MemberFilterUnknown(ActionRefused):
    """A member filter that does not exist; nothing is filtered."""


def fleets_visible(user):
    """Fleet runs whose target group ``user`` sees (the one visibility rule: ``change_targets_seen``)."""
    seen = change_targets_seen(user)
    return FleetRun.objects.all() if seen is None else FleetRun.objects.filter(target__in=list(seen))


def fleet_visible(user, fleet_run_id) -> FleetRun | None:
    """The fleet run if ``user`` sees it, else ``None`` (missing and hidden alike)."""
    try:
        uuid.UUID(str(fleet_run_id))
    except ValueError:
        return None
    return fleets_visible(user).filter(pk=fleet_run_id).first()


def member_filter_check(name: str | None) -> str:
    """The filter's name, lower-cased; ``""`` for none; :class:`MemberFilterUnknown` for any other value."""
    name = (name or "").strip().lower()
    if name and name not in MEMBER_FILTERS:
        # What was typed is shown back, redacted like any typed text (a pasted secret is masked).
        raise MemberFilterUnknown(f"unknown member filter {typed_text(name[:40])!r}: use one of {', '.join(MEMBER_FILTERS)}")
    return name


def fleet_members(fleet: FleetRun, member_filter: str = ""):
    """The fleet run's members (by wave, then name), filtered by ``member_filter`` (checked)."""
    members = FleetMemberRun.objects.filter(fleet_run=fleet)
    name = member_filter_check(member_filter)
    if name:
        members = members.filter(MEMBER_FILTERS[name])
    return members.order_by("wave", "member")


# -- waves ------------------------------------------------------------------------------------------


@dataclass
class Wave:
    number: int
    waves: int
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    not_started: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def name(self) -> str:
        return str(_("Canary")) if self.number == 0 else str(_("Wave %(n)s of %(of)s") % {"n": self.number, "of": self.waves})

    @property
    def text(self) -> str:
        """ "Wave 2 of 7: 38 of 50 members finished (3 failed)"."""
        text = _("%(name)s: %(done)s of %(total)s members finished") % {"name": self.name, "done": self.finished, "total": self.total}
        if self.failed:
            text = _("%(text)s (%(failed)s failed)") % {"text": text, "failed": self.failed}
        return str(text)

    def as_dict(self) -> dict:
        return {
            "wave": self.number,
            "name": self.name,
            "text": self.text,
            "total": self.total,
            "finished": self.finished,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "running": self.running,
            "not_started": self.not_started,
        }


@dataclass
class Progress:
    """A fleet run's members counted by wave and status, in one query."""

    waves: list[Wave] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    blocked: int = 0
    current: Wave | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def text(self) -> str:
        return self.current.text if self.current else str(_("No wave started yet"))


def fleet_progress(fleets: list[FleetRun]) -> dict[uuid.UUID, Progress]:
    """Each fleet run's progress by wave: one query for any number of fleet runs."""
    rows = (
        FleetMemberRun.objects.filter(fleet_run__in=[fleet.pk for fleet in fleets])
        .values("fleet_run_id", "wave", "status", "run__status")
        .annotate(n=Count("id"))
        .order_by()
    )
    found: dict[uuid.UUID, dict[int, Wave]] = {fleet.pk: {} for fleet in fleets}
    progress = {fleet.pk: Progress() for fleet in fleets}
    for row in rows:
        wave = found[row["fleet_run_id"]].setdefault(row["wave"], Wave(number=row["wave"], waves=0))
        shown, n = progress[row["fleet_run_id"]], row["n"]
        wave.total += n
        status = row["status"]
        shown.counts[status] = shown.counts.get(status, 0) + n
        if status == Status.SUCCEEDED:
            wave.succeeded += n
        elif status == Status.FAILED:
            wave.failed += n
            shown.blocked += n if row["run__status"] in RUN_BLOCKED else 0
        elif status == Status.NOT_STARTED:
            wave.not_started += n
        elif status in (Status.QUEUED, Status.RUNNING):
            wave.running += n
    for fleet in fleets:
        waves = [found[fleet.pk][number] for number in sorted(found[fleet.pk])]
        last = max((wave.number for wave in waves), default=0)
        for wave in waves:
            wave.waves = last
        shown = progress[fleet.pk]
        shown.waves = waves
        shown.current = next((wave for wave in waves if wave.number == fleet.wave), None)
    return progress


# -- the matrix -------------------------------------------------------------------------------------


def fleet_changes(fleet: FleetRun) -> list[str]:
    """The fleet run's change ids in the pipeline's order (stage, then order); ids the pipeline no
    longer has come last, sorted."""
    recorded = list(fleet.checksums or {})
    pipeline = pipeline_load()
    ordered = [change.id for stage in group_pipeline(pipeline, fleet.target).stages for change in stage.changes] if pipeline.valid else []
    return [change_id for change_id in ordered if change_id in recorded] + sorted(set(recorded) - set(ordered))


def fleet_state_counts(fleet: FleetRun, changes: list[str], *, total: int) -> dict[str, dict[str, int]]:
    """Per change, the fleet run's members by latest state (``""``: not applied yet), in one query."""
    rows = (
        MemberChangeState.objects.filter(
            target=fleet.target, change_id__in=changes, member__in=FleetMemberRun.objects.filter(fleet_run=fleet).values("member")
        )
        .values("change_id", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[str, dict[str, int]] = {change_id: {} for change_id in changes}
    for row in rows:
        counts[row["change_id"]][row["state"]] = row["n"]
    for states in counts.values():
        if total - sum(states.values()) > 0:
            states[""] = total - sum(states.values())
    return counts


def member_states(fleet: FleetRun, members: list[str], changes: list[str]) -> dict[str, dict[str, MemberChangeState]]:
    """The latest state of each change on each of ``members`` (one page), in one query."""
    states: dict[str, dict[str, MemberChangeState]] = {name: {} for name in members}
    for row in MemberChangeState.objects.filter(target=fleet.target, member__in=members, change_id__in=changes):
        states[row.member][row.change_id] = row
    return states


# -- issues and guidance ----------------------------------------------------------------------------


def member_issues(fleet: FleetRun, member: FleetMemberRun, states: dict[str, MemberChangeState], definitions: dict | None = None) -> dict:
    """A failed or blocked member's issues: why its run ended, each change's error as its run's page
    shows it, and the guidance of each change in a state that needs a person (``issue_guidance``)."""
    run = member.run
    results = [row for row in (run.results if run else []) if row.get("result") not in RESULTS_FINE]
    issues = []
    definitions = fleet_definitions(fleet) if definitions is None else definitions
    for change_id, state in states.items():
        if state is None or change_id not in definitions:
            continue
        change, strategy = definitions[change_id]
        recorded = SimpleNamespace(state=state.state, checksum=state.checksum, entry_id=state.entry_id, applied_count=state.applied_count)
        action, reason = resolve(change, strategy, recorded)
        if action in HOLDING:
            checksum = state.checksum if state.checksum and state.checksum != change.checksum else ""
            item = PlanItem(change=change, strategy=strategy, state=recorded, action=action, reason=reason, recorded_checksum=checksum)
            issues.append({"change_id": change_id, "state": state.state, "reason": reason, "guidance": issue_guidance(item)})
    return {
        "member": member.member,
        "blocked": run is not None and run.status in RUN_BLOCKED,
        "run_id": str(run.pk) if run else None,
        "run_status": run.status if run else None,
        "reason": member.reason or (run.status_reason if run else ""),
        "results": [
            {"change_id": row.get("change_id"), "result": row.get("result"), "reason": row.get("reason", ""), "error": row.get("error", "")}
            for row in results
        ],
        "issues": issues,
        "next_step": str(
            _("Once the cause is fixed, retry the failed members: the Retry button, or %(command)s")
            % {"command": f"python manage.py flamingock fleet retry {fleet.pk}"}
        ),
    }


def fleet_definitions(fleet: FleetRun) -> dict:
    """The group's changes in the current pipeline with their strategy: change id -> (change, strategy)."""
    pipeline = pipeline_load()
    if not pipeline.valid:
        return {}
    changes = [change for stage in group_pipeline(pipeline, fleet.target).stages for change in stage.changes]
    if not changes:
        return {}
    try:
        target = member_target(fleet.target, "overview")  # a strategy needs the kind only: nothing connects
    except GroupUnknown:  # the group left the settings since the run: its results still show
        return {}
    return {change.id: (change, target.strategy(transactional=change.transactional)) for change in changes}


# -- the whole view ---------------------------------------------------------------------------------


def fleet_overview(fleet: FleetRun, *, member_filter: str = "", page: int = 1, limit: int = MEMBERS_PER_PAGE) -> dict:
    """Everything the fleet view shows, as data: progress by wave, counts per change, and page
    ``page`` (from 1; clamped to the pages there are) of the members that pass ``member_filter``,
    with their states and, for the failed and blocked, their issues."""
    progress = fleet_progress([fleet])[fleet.pk]
    changes = fleet_changes(fleet)
    members = fleet_members(fleet, member_filter)
    matched = members.count()
    pages = max(1, -(-matched // limit))
    page = min(max(1, page), pages)
    offset = (page - 1) * limit
    page_rows = list(members.select_related("run")[offset : offset + limit])
    states = member_states(fleet, [member.member for member in page_rows], changes)
    definitions = fleet_definitions(fleet) if any(member.status == Status.FAILED for member in page_rows) else {}
    return {
        "progress": progress,
        "changes": changes,
        "counts": fleet_state_counts(fleet, changes, total=progress.total),
        "filter": member_filter_check(member_filter),
        "matched": matched,
        "page": page,
        "pages": pages,
        "offset": offset,
        "limit": limit,
        "members": [
            {
                "member": member,
                "states": {change_id: states[member.member].get(change_id) for change_id in changes},
                "issues": member_issues(fleet, member, states[member.member], definitions) if member.status == Status.FAILED else None,
            }
            for member in page_rows
        ],
    }


def fleet_overview_data(fleet: FleetRun, overview: dict) -> dict:
    """The overview as JSON: ``GET /api/v1/fleets/<id>/matrix/``."""
    progress: Progress = overview["progress"]
    return {
        "id": str(fleet.pk),
        "target": fleet.target,
        "status": fleet.status,
        "result": fleet.result or None,
        "status_reason": fleet.status_reason,
        "wave": fleet.wave,
        "progress": progress.text,
        "waves": [wave.as_dict() for wave in progress.waves],
        "counts": progress.counts,
        "blocked": progress.blocked,
        "changes": [{"id": change_id, "states": overview["counts"][change_id]} for change_id in overview["changes"]],
        "filter": overview["filter"] or None,
        "page": {
            "page": overview["page"],
            "pages": overview["pages"],
            "offset": overview["offset"],
            "limit": overview["limit"],
            "matched": overview["matched"],
            "members": [
                {
                    "member": row["member"].member,
                    "wave": row["member"].wave,
                    "status": row["member"].status,
                    "run_id": str(row["member"].run_id) if row["member"].run_id else None,
                    "states": {change_id: (state.state if state else None) for change_id, state in row["states"].items()},
                    "issues": row["issues"],
                }
                for row in overview["members"]
            ],
        },
    }


def fleets_in_progress(user, *, limit: int = 10) -> list[dict]:
    """The running fleet runs ``user`` sees, newest first, with their wave progress (the dashboard):
    two queries whatever their number."""
    fleets = list(fleets_visible(user).filter(status=FleetRun.Status.RUNNING).order_by("-created_at")[:limit])
    progress = fleet_progress(fleets) if fleets else {}
    return [{"fleet": fleet, "progress": progress[fleet.pk]} for fleet in fleets]
