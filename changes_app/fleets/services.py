"""Fleet runs: members discovered, a parent with one child per member, waves dispatched on Celery.

No chords and no result backend: a fleet run's waves, halt and finish are decided by
:func:`fleet_advance` from its members' rows and their child runs' rows. Each member task calls it
when its member ends, and so does the periodic :func:`fleets_reap` (with the runs' reaper), so a lost
task or a killed worker cannot leave a fleet run waiting (docs/fleet.md).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from types import SimpleNamespace

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Count
from django.utils import timezone

from audit_app.models import MemberChangeState
from audit_app.redaction import redact, redact_data
from audit_app.services import Actor, FenceRefused, StateMoved, audit_record
from changes_app.conf import current_environment
from changes_app.engine.executor import RunAborted, counts_of, results_as_dicts
from changes_app.errors import ActionRefused, FlamingockError, NotFound, PipelineInvalid
from changes_app.fleets import governance
from changes_app.fleets.executor import MemberExecutor, group_pipeline
from changes_app.fleets.groups import (
    GroupUnknown,
    group_config,
    group_members_found,
    group_names,
    member_target,
    member_target_done,
    member_target_reused,
)
from changes_app.fleets.locks import MemberLeaseLock, member_lock_name
from changes_app.governance.permissions import target_operate_check
from changes_app.governance.refusals import refusals_recorded
from changes_app.governance.visibility import actor_change_targets_seen
from changes_app.models import ChangeRequest, FleetMember, FleetMemberRun, FleetRun, Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.plan import Action, resolve
from changes_app.services.plan import approval_hook
from changes_app.services.queue import tasks_send_group
from changes_app.services.requests import SubjectKind, requests_withdraw, subject_kind_register
from changes_app.services.runs import run_finished

logger = logging.getLogger("flamingock.fleets")

MEMBER_TASK = "flamingock.fleet_member_execute"
DISCOVERY = Actor(name="service:fleet-discovery", via="schedule")
REAPER = Actor(name="service:fleet-reaper", via="schedule")
#: Child-run statuses that count as the member's success.
MEMBER_SUCCEEDED = frozenset({Run.Status.SUCCEEDED, Run.Status.NO_CHANGES})
IN_FLIGHT = (FleetMemberRun.Status.QUEUED, FleetMemberRun.Status.RUNNING)


# -- members ------------------------------------------------------------------------------------------


def members_discover(*, target: str, actor: Actor = DISCOVERY) -> dict[str, list[str]]:
    """Read the group's members now and record the difference: ``member.added`` and
    ``member.removed``, each naming its member. A plan and a fleet run read the last list."""
    found = set(group_members_found(target))
    environment = current_environment()
    added, removed = [], []
    with transaction.atomic():
        known = {row.name: row for row in FleetMember.objects.select_for_update().filter(target=target)}
        for name in sorted(found):
            row = known.get(name)
            if row is not None and row.removed_at is None:
                continue
            if row is None:
                FleetMember.objects.create(target=target, name=name)
            else:
                FleetMember.objects.filter(pk=row.pk).update(removed_at=None, discovered_at=timezone.now())
            audit_record(event="member.added", actor=actor, environment=environment, member=name, details={"target": target})
            added.append(name)
        for name, row in sorted(known.items()):
            if name in found or row.removed_at is not None:
                continue
            FleetMember.objects.filter(pk=row.pk).update(removed_at=timezone.now())
            audit_record(event="member.removed", actor=actor, environment=environment, member=name, details={"target": target})
            removed.append(name)
    return {"added": added, "removed": removed, "members": sorted(found)}


def group_members(*, target: str) -> list[str]:
    """The group's members as last discovered."""
    return list(FleetMember.objects.filter(target=target, removed_at=None).order_by("name").values_list("name", flat=True))


def members_discover_all() -> dict[str, dict[str, list[str]]]:
    """Discover the members of every group (the beat task); a group that cannot be read is logged."""
    found = {}
    for target in group_names():
        try:
            found[target] = members_discover(target=target)
        except Exception as error:  # one unreachable group does not stop the others
            logger.warning("fleet discovery of %s failed: %s", target, redact(str(error)))
    return found


# -- fleet runs ---------------------------------------------------------------------------------------


def _waves(members: list[str], *, canary: int, wave_size: int) -> list[tuple[str, int]]:
    """Wave 0 is the canary of ``canary`` members; then waves of ``wave_size``."""
    placed = [(name, 0) for name in members[:canary]]
    rest = members[canary:]
    placed += [(name, 1 + index // wave_size) for index, name in enumerate(rest)]
    return placed


@refusals_recorded("fleet.run", object="target group {target}")
def fleet_run_start(
    *,
    actor: Actor,
    target: str,
    source: str,
    canary: int = 1,
    wave_size: int = 10,
    concurrency: int = 4,
    max_failures: int = 1,
    discover: bool = True,
) -> FleetRun:
    """Start a fleet run of the group's changes on every member of group ``target``."""
    if canary < 0 or wave_size < 1 or concurrency < 1 or max_failures < 1:
        raise ActionRefused("canary must be 0 or more; wave size, concurrency and failures that halt must be 1 or more")
    group_config(target)  # GroupUnknown: not a group
    target_operate_check(actor, target)
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    if discover:
        members_discover(target=target, actor=actor)  # the run's first step
    members = group_members(target=target)
    if not members:
        raise ActionRefused(f"target group {target!r} has no members")
    checksums = {change.id: change.checksum for stage in group_pipeline(pipeline, target).stages for change in stage.changes}
    with transaction.atomic():
        fleet = FleetRun.objects.create(
            target=target,
            environment=current_environment(),
            source=source,
            actor=actor.name,
            started_by_id=actor.user_id,
            canary=canary,
            wave_size=wave_size,
            concurrency=concurrency,
            max_failures=max_failures,
            checksums=checksums,
            wave=-1,
        )
        FleetMemberRun.objects.bulk_create(
            [FleetMemberRun(fleet_run=fleet, member=name, wave=wave) for name, wave in _waves(members, canary=canary, wave_size=wave_size)]
        )
        audit_record(
            event="fleet.started",
            actor=actor,
            environment=fleet.environment,
            details={
                "fleet_run": str(fleet.pk),
                "target": target,
                "members": len(members),
                "policy": {"canary": canary, "wave_size": wave_size, "concurrency": concurrency, "max_failures": max_failures},
                "checksums": checksums,
            },
        )
    return fleet_advance(fleet_run_id=fleet.pk)


def _member_status_of(run: Run) -> str:
    if not run.finished:
        return FleetMemberRun.Status.RUNNING
    return FleetMemberRun.Status.SUCCEEDED if run.status in MEMBER_SUCCEEDED else FleetMemberRun.Status.FAILED


def fleet_advance(*, fleet_run_id: uuid.UUID, actor: Actor = REAPER) -> FleetRun:
    """Decide a fleet run's next step from its members' rows: settle the members whose child run
    ended, halt by policy, start the next wave, dispatch members up to the concurrency limit, finish.
    Idempotent; called by every member task when it ends and by the reaper."""
    dispatched: list[int] = []
    with transaction.atomic():
        fleet = FleetRun.objects.select_for_update().filter(pk=fleet_run_id).first()
        if fleet is None:
            raise NotFound(f"no fleet run {fleet_run_id}")
        if fleet.status == FleetRun.Status.FINISHED:
            return fleet
        if fleet.status == FleetRun.Status.AWAITING_APPROVAL and fleet.cancel_requested_at is None:
            return fleet  # nothing in flight: its FLEET_CONTINUE request decides (``_continue_approved``)
        # Rows read are bounded by the concurrency limit and the failures, not by the fleet's size.
        in_flight = list(fleet.members.filter(status__in=IN_FLIGHT).select_related("run"))
        now = timezone.now()
        for member in in_flight:
            if member.status == FleetMemberRun.Status.RUNNING and member.run is not None:
                status = _member_status_of(member.run)
                if status != member.status:
                    member.status, member.reason, member.finished_at = status, member.run.status_reason, now
                    FleetMemberRun.objects.filter(pk=member.pk).update(status=status, reason=member.reason, finished_at=now)
        in_flight = [member for member in in_flight if member.status in IN_FLIGHT]
        failed_rows = fleet.members.filter(status=FleetMemberRun.Status.FAILED)
        total_failed = failed_rows.count()
        if fleet.failures_counted_from is not None:
            # After a resume only new failures count toward the halt (docs/fleet.md, "Resume").
            failed_rows = failed_rows.filter(finished_at__gte=fleet.failures_counted_from)
        failed = list(failed_rows.order_by("wave", "member").values_list("member", "wave"))
        if not fleet.halted and failed and (len(failed) >= fleet.max_failures or any(wave == 0 for _, wave in failed)):
            canary = [name for name, wave in failed if wave == 0]
            why = f"canary member(s) failed: {', '.join(canary)}" if canary else f"{len(failed)} member(s) failed (halt at {fleet.max_failures})"
            _halt(fleet, why, actor=actor, failed=[name for name, _ in failed])
        pending = fleet.members.filter(status=FleetMemberRun.Status.PENDING)
        wave = pending.order_by("wave").values_list("wave", flat=True).first()
        awaiting = False
        if not fleet.halted and fleet.cancel_requested_at is None and wave is not None:
            earlier_busy = any(member.wave < wave for member in in_flight)
            if (
                not earlier_busy
                and fleet.wave == 0
                and wave > 0
                and governance.canary_approval_required(fleet)
                and not governance.canary_approved(fleet)
            ):
                awaiting = True
                _fleet_await(fleet, actor=actor)
            elif not earlier_busy:
                if wave > fleet.wave:
                    fleet.wave = wave
                    FleetRun.objects.filter(pk=fleet.pk).update(wave=wave)
                    audit_record(
                        event="fleet.wave_started",
                        actor=actor,
                        environment=fleet.environment,
                        details={
                            "fleet_run": str(fleet.pk),
                            "target": fleet.target,
                            "wave": wave,
                            "canary": wave == 0,
                            "members": pending.filter(wave=wave).count(),
                        },
                    )
                slots = max(0, fleet.concurrency - len(in_flight))
                if slots:
                    dispatched = list(pending.filter(wave=wave).order_by("member").values_list("pk", flat=True)[:slots])
                    FleetMemberRun.objects.filter(pk__in=dispatched).update(status=FleetMemberRun.Status.QUEUED, queued_at=now, finished_at=None)
        if not in_flight and not dispatched and not awaiting:
            _fleet_finish(fleet, failed=total_failed, actor=actor)
        if dispatched:
            transaction.on_commit(lambda: members_dispatch(dispatched))
    fleet.refresh_from_db()
    return fleet


def _fleet_await(fleet: FleetRun, *, actor: Actor) -> None:
    """Stop after the canary: the group's policy asks for a fresh approval (a FLEET_CONTINUE
    request, made as the fleet run's starter) before the next wave starts."""
    succeeded = fleet.members.filter(wave=0, status=FleetMemberRun.Status.SUCCEEDED).count()
    request = governance.continue_request_open(fleet, succeeded=succeeded)
    why = f"the canary succeeded; request #{request.pk} needs {request.required_approvals} approval(s) before the next wave"
    fleet.status, fleet.status_reason = FleetRun.Status.AWAITING_APPROVAL, why
    FleetRun.objects.filter(pk=fleet.pk).update(status=fleet.status, status_reason=why)
    audit_record(
        event="fleet.awaiting_approval",
        actor=actor,
        environment=fleet.environment,
        reason=why,
        details={"fleet_run": str(fleet.pk), "target": fleet.target, "request_id": request.pk, "canary_succeeded": succeeded},
    )


def _halt(fleet: FleetRun, why: str, *, actor: Actor, failed: list[str], **details) -> None:
    """Start no more members of ``fleet`` (its members under way finish), audited as ``fleet.halted``."""
    fleet.halted, fleet.status_reason = True, why
    FleetRun.objects.filter(pk=fleet.pk).update(halted=True, status_reason=why)
    audit_record(
        event="fleet.halted",
        actor=actor,
        environment=fleet.environment,
        reason=why,
        details={"fleet_run": str(fleet.pk), "target": fleet.target, **details, "failed": failed},
    )


def _fleet_finish(fleet: FleetRun, *, failed: int, actor: Actor) -> None:
    """End the fleet run: members never started are NOT_STARTED; the result from what happened."""
    FleetMemberRun.objects.filter(fleet_run=fleet, status=FleetMemberRun.Status.PENDING).update(status=FleetMemberRun.Status.NOT_STARTED)
    if fleet.cancel_requested_at is not None:
        result = FleetRun.Result.CANCELLED
    elif fleet.halted:
        result = FleetRun.Result.HALTED
    elif failed:
        result = FleetRun.Result.PARTIAL
    else:
        result = FleetRun.Result.SUCCEEDED
    counts = fleet_counts(fleet_run_id=fleet.pk)
    FleetRun.objects.filter(pk=fleet.pk).update(status=FleetRun.Status.FINISHED, result=result, finished_at=timezone.now())
    audit_record(
        event="fleet.finished",
        actor=actor,
        environment=fleet.environment,
        reason=fleet.status_reason,
        details={"fleet_run": str(fleet.pk), "target": fleet.target, "result": result, "counts": counts},
    )


def fleet_counts(*, fleet_run_id: uuid.UUID) -> dict[str, int]:
    """Members by status, in one query."""
    rows = FleetMemberRun.objects.filter(fleet_run_id=fleet_run_id).values("status").annotate(n=Count("id")).order_by()
    return {row["status"]: row["n"] for row in rows}


def members_dispatch(member_run_ids: list[int]) -> None:
    """Queue one task per member with Celery's canvas: a group, no chord (no result backend)."""
    tasks_send_group(MEMBER_TASK, args_each=[[member_run_id] for member_run_id in member_run_ids])


# -- one member ---------------------------------------------------------------------------------------


def member_claim(*, member_run_id: int) -> FleetMemberRun | None:
    """QUEUED to RUNNING, once: a redelivered or duplicate task gets ``None``."""
    claimed = FleetMemberRun.objects.filter(pk=member_run_id, status=FleetMemberRun.Status.QUEUED)
    # ``queued_at`` becomes the claim's time: a member claimed long ago that still has no run was lost
    # with its worker. The previous attempt's run is let go in the same statement: until this
    # attempt's run exists, ``fleet_advance`` must not settle the member from the old one.
    if not claimed.update(status=FleetMemberRun.Status.RUNNING, queued_at=timezone.now(), run=None):
        return None
    return FleetMemberRun.objects.select_related("fleet_run").get(pk=member_run_id)


def fleet_member_execute(*, member_run_id: int) -> FleetMemberRun | None:
    """Run one member's child run in this process, then advance its fleet run."""
    member = member_claim(member_run_id=member_run_id)
    if member is None:
        return None
    fleet = member.fleet_run
    actor = Actor(name=fleet.actor, user_id=fleet.started_by_id, via=fleet.source.lower())
    try:
        _member_run(member, fleet, actor)
    finally:
        fleet_advance(fleet_run_id=fleet.pk)
    member.refresh_from_db()
    return member


def _member_run(member: FleetMemberRun, fleet: FleetRun, actor: Actor) -> None:
    try:
        pipeline = pipeline_load()
        run = _member_run_create(member, fleet, actor, pipeline)
    except Exception as error:
        # Nothing ran and no run exists (its transaction rolled back): the member fails now, with the
        # reason, instead of waiting RUNNING for the reaper.
        logger.exception("fleet %s member %s: its run could not start", fleet.pk, member.member)
        _connections_broken_close()
        FleetMemberRun.objects.filter(pk=member.pk, status=FleetMemberRun.Status.RUNNING, run=None).update(
            status=FleetMemberRun.Status.FAILED,
            reason=redact(f"the member's run could not start: {type(error).__name__}: {error}"),
            finished_at=timezone.now(),
        )
        return
    target = executor = None
    status, reason = Run.Status.ABORTED, ""
    try:
        # Inside the ``try``: a member whose target, lock or executor cannot be built ends its run
        # FAILED or ABORTED now, not RUNNING until the reaper.
        target = member_target_reused(fleet.target, member.member)
        lock = MemberLeaseLock(
            member_lock_name(environment=fleet.environment, target=fleet.target, member=member.member),
            lease_seconds=settings.FLAMINGOCK_LOCK.get("lease_seconds", 60.0),
        )
        executor = MemberExecutor(
            run, member=member.member, target=target, pipeline=pipeline, lock=lock, actor=actor, approval_needed=approval_hook()
        )
        holder = executor.acquire()
        if holder is not None:
            status, reason = Run.Status.LOCKED, f"member lock held by {holder.holder} (run {holder.run_id}, until {holder.expires_at})"
        else:
            status, reason = executor.execute_pipeline()
    except (FenceRefused, StateMoved) as error:
        status, reason = Run.Status.ABORTED, f"refused by the ledger: {error}"
    except RunAborted as error:
        status, reason = Run.Status.ABORTED, str(error)
    except FlamingockError as error:
        status, reason = Run.Status.FAILED, str(error)
    except Exception as error:
        logger.exception("fleet %s member %s stopped by an unexpected error", fleet.pk, member.member)
        _connections_broken_close()
        status, reason = Run.Status.ABORTED, f"stopped by an unexpected error: {type(error).__name__}: {error}"
    finally:
        if executor is not None:
            try:
                executor.release()
            except Exception:
                logger.exception("fleet %s member %s: releasing the lock failed; the lease expires on its own", fleet.pk, member.member)
        if target is not None:
            try:
                member_target_done(target)
            except Exception:
                logger.exception("fleet %s member %s: closing the target's connection failed", fleet.pk, member.member)
    results = executor.results if executor is not None else []
    run.status, run.status_reason, run.finished_at = status, redact(reason), timezone.now()
    run.results, run.counts = redact_data(results_as_dicts(results)), counts_of(results)
    with transaction.atomic():  # one commit: the run's row and its last entry
        run.save(update_fields=["status", "status_reason", "finished_at", "results", "counts"])
        audit_record(
            event="run.aborted" if status == Run.Status.ABORTED else "run.finished",
            actor=actor,
            environment=run.environment,
            run_id=run.id,
            member=member.member,
            reason=reason,
            details={"status": status, "counts": run.counts, "fleet_run": str(fleet.pk)},
            before_commit=lambda: None,  # the block's last statement: the entry goes with the COMMIT
        )
    # As every run does (requests settle, a FAILED or BLOCKED run is notified): a child run is a run.
    _member_run_finished(run)


# -- the fleet plan -------------------------------------------------------------------------------------


def fleet_plan(*, target: str, offset: int = 0, limit: int = 50) -> dict:
    """What a fleet run of group ``target`` would do: per change, how many members are at each next
    action (from counts per latest state and checksum, computed in SQL: the resolver's table applied
    to each count, ignoring stage order), and a page of members with their latest states. A fixed
    number of queries (five), whatever the number of members; measured at 100,000 members x 50
    changes by ``bench/fleet.py --plan`` (docs/fleet.md)."""
    group_config(target)
    pipeline = pipeline_load()
    if not pipeline.valid:
        raise PipelineInvalid(pipeline)
    grouped = group_pipeline(pipeline, target)
    targets = {target: member_target(target, "plan")}  # a strategy needs the kind only: nothing connects
    changes = [change for stage in grouped.stages for change in stage.changes]
    strategies = {change.id: targets[target].strategy(transactional=change.transactional) for change in changes}
    members = FleetMember.objects.filter(target=target, removed_at=None)
    total = members.count()
    # The ledger's rows of the group's changes, counted with no join to the members (the scan of the
    # ledger is the cost), less those of removed members (few, found by the (member, change) index).
    ids = [change.id for change in changes]
    states = MemberChangeState.objects.filter(change_id__in=ids, target=target)
    removed = FleetMember.objects.filter(target=target, removed_at__isnull=False).values("name")
    by_change: dict[str, dict[str, int]] = {change.id: {} for change in changes}
    seen: dict[str, int] = dict.fromkeys(by_change, 0)
    definitions = {change.id: change for change in changes}
    for counted, sign in ((states, 1), (states.filter(member__in=removed), -1)):
        for row in counted.values("change_id", "state", "checksum").annotate(n=Count("*")).order_by():
            change = definitions[row["change_id"]]
            action, _ = resolve(change, strategies[change.id], SimpleNamespace(state=row["state"], checksum=row["checksum"]))
            counts = by_change[change.id]
            counts[action.value] = counts.get(action.value, 0) + sign * row["n"]
            seen[change.id] += sign * row["n"]
    for counts in by_change.values():
        for action in [action for action, n in counts.items() if not n]:
            del counts[action]
    for change_id, count in seen.items():
        if total - count:
            by_change[change_id][Action.APPLY.value] = by_change[change_id].get(Action.APPLY.value, 0) + total - count
    page = list(members.order_by("name").values_list("name", flat=True)[offset : offset + limit])
    states: dict[str, dict[str, str]] = {name: {} for name in page}
    for member, change_id, state in MemberChangeState.objects.filter(member__in=page, change_id__in=list(definitions)).values_list(
        "member", "change_id", "state"
    ):
        states[member][change_id] = state
    return {
        "target": target,
        "members": total,
        "changes": [{"id": change.id, "stage": change.stage, "checksum": change.checksum, "actions": by_change[change.id]} for change in changes],
        "page": {"offset": offset, "limit": limit, "members": [{"member": name, "states": states[name]} for name in page]},
    }


# -- cancel, resume, retry, reap ----------------------------------------------------------------------


def _fleet_for_update(fleet_run_id) -> FleetRun:
    fleet = FleetRun.objects.select_for_update().filter(pk=fleet_run_id).first()
    if fleet is None:
        raise NotFound(f"no fleet run {fleet_run_id}")
    return fleet


@refusals_recorded("fleet.cancel", object="fleet run {fleet_run_id}")
def fleet_cancel(*, fleet_run_id: uuid.UUID, actor: Actor) -> FleetRun:
    """Start no more members; members under way finish their current change and stop (their runs are
    cancelled); the fleet run ends CANCELLED."""
    with transaction.atomic():
        fleet = _fleet_for_update(fleet_run_id)
        target_operate_check(actor, fleet.target)
        if fleet.status == FleetRun.Status.FINISHED:
            raise ActionRefused(f"fleet run {fleet.pk} already finished ({fleet.result})")
        now = timezone.now()
        FleetRun.objects.filter(pk=fleet.pk).update(cancel_requested_at=now, cancel_requested_by=actor.name)
        # Queued members never start (their task finds them no longer queued); running ones stop before their next change.
        FleetMemberRun.objects.filter(fleet_run=fleet, status=FleetMemberRun.Status.QUEUED).update(status=FleetMemberRun.Status.NOT_STARTED)
        running = FleetMemberRun.objects.filter(fleet_run=fleet, status=FleetMemberRun.Status.RUNNING).values_list("run_id", flat=True)
        Run.objects.filter(pk__in=list(running), finished_at=None).update(cancel_requested_at=now, cancel_requested_by=actor.name)
        audit_record(event="run.cancel_requested", actor=actor, environment=fleet.environment, details={"fleet_run": str(fleet.pk)})
        # Its open requests (a retry, the approval after the canary) have nothing left to decide.
        requests_withdraw(subject_id=governance.fleet_subject(fleet.pk), actor=actor, why=f"fleet run {fleet.pk} was cancelled by {actor.name}")
    return fleet_advance(fleet_run_id=fleet_run_id, actor=actor)


def _fleet_operable(fleet_run_id, actor: Actor) -> FleetRun:
    """The fleet run, once ``actor`` may operate its group: the permission is checked against the
    object before anything about its state is said."""
    fleet = FleetRun.objects.filter(pk=fleet_run_id).first()
    if fleet is None:
        raise NotFound(f"no fleet run {fleet_run_id}")
    target_operate_check(actor, fleet.target)
    return fleet


def _reopen(fleet_run_id, actor: Actor, *, statuses: tuple[str, ...], event: str, request: ChangeRequest | None = None) -> FleetRun:
    with transaction.atomic():
        fleet = _fleet_for_update(fleet_run_id)
        target_operate_check(actor, fleet.target)
        if fleet.status != FleetRun.Status.FINISHED:
            raise ActionRefused(f"fleet run {fleet.pk} is still running")
        reopened = FleetMemberRun.objects.filter(fleet_run=fleet, status__in=statuses)
        names = list(reopened.values_list("member", flat=True))
        if not names:
            raise ActionRefused(f"fleet run {fleet.pk} has no member to {event.split('.')[-1]}")
        reopened.update(status=FleetMemberRun.Status.PENDING, finished_at=None)
        now = timezone.now()
        FleetRun.objects.filter(pk=fleet.pk).update(
            status=FleetRun.Status.RUNNING,
            result="",
            halted=False,
            # Failures before the reopen do not halt it again: only those from now on count.
            failures_counted_from=now,
            status_reason="",
            finished_at=None,
            cancel_requested_at=None,
            cancel_requested_by="",
        )
        if request is not None:
            ChangeRequest.objects.filter(pk=request.pk, status=ChangeRequest.Status.APPROVED).update(
                status=ChangeRequest.Status.EXECUTED, executed_at=now
            )
        audit_record(
            event=event,
            actor=actor,
            environment=fleet.environment,
            details={
                "fleet_run": str(fleet.pk),
                "target": fleet.target,
                "members": names,
                **({"request_id": request.pk, "checksum": request.checksum} if request is not None else {}),
            },
        )
    return fleet_advance(fleet_run_id=fleet_run_id, actor=actor)


@refusals_recorded("fleet.resume", object="fleet run {fleet_run_id}")
def fleet_resume(*, fleet_run_id: uuid.UUID, actor: Actor) -> FleetRun:
    """Start again the members a halt or a cancel left not started (a failed member stays failed,
    and counts no more toward the halt: only failures after the resume do)."""
    fleet = _fleet_operable(fleet_run_id, actor)
    if fleet.status != FleetRun.Status.FINISHED:
        raise ActionRefused(f"fleet run {fleet.pk} is still running")
    return _reopen(fleet_run_id, actor, statuses=(FleetMemberRun.Status.NOT_STARTED,), event="fleet.resumed")


RETRIED = (FleetMemberRun.Status.FAILED, FleetMemberRun.Status.NOT_STARTED)


@refusals_recorded("fleet.retry", object="fleet run {fleet_run_id}")
def fleet_retry(*, fleet_run_id: uuid.UUID, actor: Actor, reason: str = "", source: str = Run.Source.CLI) -> FleetRun:
    """Retry the failed members (after a fix), and start those the halt left not started.

    A governed action: where a policy governs the group in the environment, a FLEET_RETRY request
    bound to the fleet run and the checksums of the group's changes now, retried when approved
    (at once where the policy requires no approval); with no policy, retried at once."""
    fleet = _fleet_operable(fleet_run_id, actor)
    if fleet.status != FleetRun.Status.FINISHED:
        raise ActionRefused(f"fleet run {fleet.pk} is still running")
    members = list(FleetMemberRun.objects.filter(fleet_run=fleet, status__in=RETRIED).order_by("member").values_list("member", flat=True))
    if not members:
        raise ActionRefused(f"fleet run {fleet.pk} has no member to retry")
    required = governance.retry_governed(fleet)
    if required is None:
        return _reopen(fleet_run_id, actor, statuses=RETRIED, event="fleet.retry_requested")
    request = governance.retry_request_open(
        fleet,
        actor=actor,
        reason=reason or f"retry the {len(members)} failed or not started member(s) of fleet run {fleet.pk}",
        source=source,
        required=required,
        members=members,
    )
    if request.status == ChangeRequest.Status.APPROVED:
        return _retry_approved(request)
    fleet.refresh_from_db()
    return fleet


def _request_fleet(request: ChangeRequest) -> FleetRun | None:
    return FleetRun.objects.filter(pk=(request.rendered or {}).get("fleet_run")).first()


def _request_binding(request: ChangeRequest) -> None:
    governance.request_binding_check(request, _request_fleet(request))


def _requester(request: ChangeRequest) -> Actor:
    return Actor(name=request.requester_name, user_id=request.requester_id, via=request.source.lower())


def _rejecter(request: ChangeRequest) -> Actor:
    rejection = request.approvals.filter(decision="REJECT").order_by("-id").first()
    return Actor(name=rejection.approver_name, user_id=rejection.approver_id, via="ui") if rejection is not None else REAPER


def _retry_approved(request: ChangeRequest) -> FleetRun:
    """Execute an approved FLEET_RETRY request, as its requester (who must still operate the group)."""
    _request_binding(request)
    return _reopen(_request_fleet(request).pk, _requester(request), statuses=RETRIED, event="fleet.retry_requested", request=request)


def _continue_approved(request: ChangeRequest) -> FleetRun:
    """Execute an approved FLEET_CONTINUE request: the waves after the canary start."""
    fleet_run = _request_fleet(request)
    if fleet_run is None:
        raise NotFound(f"request #{request.pk}: no fleet run {request.change_id}")
    with transaction.atomic():
        fleet = _fleet_for_update(fleet_run.pk)
        governance.request_binding_check(request, fleet)
        FleetRun.objects.filter(pk=fleet.pk).update(status=FleetRun.Status.RUNNING, status_reason="")
        ChangeRequest.objects.filter(pk=request.pk, status=ChangeRequest.Status.APPROVED).update(
            status=ChangeRequest.Status.EXECUTED, executed_at=timezone.now()
        )
        approvers = list(request.approvals.filter(decision="APPROVE").values_list("approver_name", flat=True))
        audit_record(
            event="fleet.continued",
            actor=_requester(request),
            environment=fleet.environment,
            details={"fleet_run": str(fleet.pk), "target": fleet.target, "request_id": request.pk, "approved_by": approvers},
        )
    return fleet_advance(fleet_run_id=fleet.pk)


def _continue_refused(request: ChangeRequest, *, actor: Actor = REAPER) -> FleetRun | None:
    """A FLEET_CONTINUE request was rejected (or expired, or was withdrawn): the fleet run ends HALTED."""
    fleet_run = _request_fleet(request)
    if fleet_run is None:
        return None
    with transaction.atomic():
        fleet = _fleet_for_update(fleet_run.pk)
        if fleet.status != FleetRun.Status.AWAITING_APPROVAL:
            return fleet
        why = f"request #{request.pk} to continue after the canary was {request.status.lower()}"
        if request.status_reason:
            why += f": {request.status_reason}"
        _halt(fleet, why, actor=actor, failed=[], request_id=request.pk)
        total_failed = fleet.members.filter(status=FleetMemberRun.Status.FAILED).count()
        _fleet_finish(fleet, failed=total_failed, actor=actor)
    fleet.refresh_from_db()
    return fleet


def fleets_reap(*, now=None) -> dict[str, list[str]]:
    """The reaper's part for fleets: re-send members whose task was lost (QUEUED too long), and
    advance every running fleet run from its rows (child runs the runs' reaper aborted included)."""
    now = now or timezone.now()
    queued_after = timedelta(seconds=settings.FLAMINGOCK_RUN_QUEUED_TIMEOUT)
    advanced, resent = [], []
    for fleet_id in FleetRun.objects.filter(status=FleetRun.Status.RUNNING, environment=current_environment()).values_list("pk", flat=True):
        queued = FleetMemberRun.objects.filter(fleet_run_id=fleet_id, status=FleetMemberRun.Status.QUEUED, queued_at__lt=now - queued_after)
        lost = list(queued.values_list("pk", flat=True))
        if lost:
            FleetMemberRun.objects.filter(pk__in=lost, status=FleetMemberRun.Status.QUEUED).update(queued_at=now)
            members_dispatch(lost)  # the claim makes a duplicate harmless
            resent += [str(pk) for pk in lost]
        # Claimed, but the worker died before the member's run existed: nothing ran; a failed member.
        FleetMemberRun.objects.filter(fleet_run_id=fleet_id, status=FleetMemberRun.Status.RUNNING, run=None, queued_at__lt=now - queued_after).update(
            status=FleetMemberRun.Status.FAILED, reason="the worker stopped before the member's run started", finished_at=now
        )
        fleet_advance(fleet_run_id=fleet_id)
        advanced.append(str(fleet_id))
    # A fleet run awaiting approval whose request lapsed (expired, withdrawn) ends HALTED.
    for fleet in FleetRun.objects.filter(status=FleetRun.Status.AWAITING_APPROVAL, environment=current_environment()):
        request = governance.continue_request(fleet)
        if request is not None and request.status in ChangeRequest.FINAL and request.status != ChangeRequest.Status.EXECUTED:
            _continue_refused(request, actor=REAPER)
            advanced.append(str(fleet.pk))
    return {"advanced": advanced, "resent": resent}


def fleet_get(*, fleet_run_id, actor: Actor) -> FleetRun:
    """A fleet run the actor may see (its target group among the targets they see); else NotFound."""
    fleet = FleetRun.objects.filter(pk=fleet_run_id).first()
    seen = actor_change_targets_seen(actor)
    if fleet is None or (seen is not None and fleet.target not in seen):
        raise NotFound(f"no fleet run {fleet_run_id}")
    return fleet


# -- helpers of the member's execution -------------------------------------------------------------------


def _member_run_create(member: FleetMemberRun, fleet: FleetRun, actor: Actor, pipeline) -> Run:
    """The member's child run, RUNNING, with its ``run.started`` entry, in one commit."""
    now = timezone.now()
    with transaction.atomic():
        run = Run.objects.create(
            kind=Run.Kind.PIPELINE,
            source=fleet.source,
            environment=fleet.environment,
            reason=f"fleet run {fleet.pk}: member {member.member}",
            parameters={"fleet_run": str(fleet.pk), "member": member.member, "attempt": member.attempts + 1},
            started_by_id=fleet.started_by_id,
            actor=fleet.actor,
            host=actor.host,
            pid=actor.pid,
            pipeline_digest=pipeline.digest,
            status=Run.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
        )
        FleetMemberRun.objects.filter(pk=member.pk).update(run=run, attempts=member.attempts + 1)
        audit_record(
            event="run.started",
            actor=actor,
            environment=run.environment,
            run_id=run.id,
            member=member.member,
            details={"kind": run.kind, "fleet_run": str(fleet.pk)},
            before_commit=lambda: None,  # the block's last statement: the entry goes with the COMMIT
        )
    return run


def _member_run_finished(run: Run) -> None:
    """``run_finished`` for a member's child run, as every run sends it; a receiver's error is logged:
    the run and its trail are the truth."""
    for receiver, error in run_finished.send_robust(sender=Run, run=run):
        if isinstance(error, Exception):
            logger.error("run %s: %s failed after the run finished: %s", run.id, getattr(receiver, "__name__", receiver), error, exc_info=error)


def _connections_broken_close() -> None:
    """Close the database connections an unexpected error left unusable (outside a transaction)."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
            connection.close()


def _continue_rejected(request: ChangeRequest) -> None:
    """A FLEET_CONTINUE request rejected: the fleet run ends HALTED, under the rejecting approver's name."""
    _continue_refused(request, actor=_rejecter(request))


# The request kinds whose subject is a fleet run; ``ChangesAppConfig.ready`` imports this module.
subject_kind_register(ChangeRequest.Kind.FLEET_RETRY, SubjectKind(binding=_request_binding, execute=_retry_approved, rejected=lambda request: None))
subject_kind_register(
    ChangeRequest.Kind.FLEET_CONTINUE, SubjectKind(binding=_request_binding, execute=_continue_approved, rejected=_continue_rejected)
)


__all__ = [
    "GroupUnknown",
    "fleet_advance",
    "fleet_cancel",
    "fleet_counts",
    "fleet_get",
    "fleet_plan",
    "fleet_member_execute",
    "fleet_resume",
    "fleet_retry",
    "fleet_run_start",
    "fleets_reap",
    "group_members",
    "members_discover",
    "members_discover_all",
]
