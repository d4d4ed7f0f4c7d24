"""Drift checks and the findings they keep (docs/semantics.md §9).

Each check computes the conditions it sees now, then reconciles them with the stored findings:
a condition seen for the first time (or again after it was resolved) opens a finding, audited as
``drift.detected`` and notified once; a condition seen again only updates the row (last seen,
times seen, evidence); an active finding the check no longer sees is resolved automatically,
audited as ``drift.resolved``. So a check run every few minutes never repeats itself.

Live probes never take the pipeline lock: they read a snapshot of the ledger first and drop any
result whose change moved while it was probed (an in-flight run is not drift).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.models import ChangeStateName as S
from audit_app.services import Actor, ChangeRef, audit_record, change_states
from changes_app.conf import current_environment
from changes_app.drift.django_migrations import KINDS as DJANGO_DRIFT_KINDS
from changes_app.drift.django_migrations import django_drift_observe
from changes_app.drift.findings import finding_as_dict
from changes_app.drift.notifications import finding_notify, findings_notify_grouped
from changes_app.engine.probes import ProbeContext, verify_probe
from changes_app.errors import ActionRefused, NotFound, PipelineInvalid, require_reason
from changes_app.governance.permissions import PermissionRefused
from changes_app.locks.backends import lock_backend
from changes_app.models import ChangeRequest, Finding, Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.plan import Action
from changes_app.services import pipeline_plan, request_submit
from changes_app.services.schedules import schedule_change_audit
from changes_app.services.workers import WorkerStale, worker_stale_check, workers_list
from changes_app.targets.base import target_systems

logger = logging.getLogger("flamingock.drift")

#: Who runs the scheduled checks and resolves what cleared.
DRIFT_CHECKER = Actor(name="service:drift", via="schedule")

CHECKS = (Finding.Check.DEFINITION, Finding.Check.OPERATIONAL, Finding.Check.LIVE)


@dataclass
class Condition:
    """One drift condition as a check sees it now."""

    kind: str
    summary: str
    evidence: dict[str, Any]
    change_id: str = ""
    target: str = ""
    stage: str = ""
    run_id: str | None = None
    lock_name: str = ""
    #: A worker's name (``worker.stale``): the subject when there is no change, run or lock.
    worker: str = ""
    #: A periodic task's name (``SCHEDULE_CHANGED``).
    schedule: str = ""
    #: A member of a target group (fleet drift): one finding per member, change and kind.
    member: str = ""

    def fingerprint(self, environment: str) -> str:
        subject = self.change_id or self.run_id or self.lock_name or self.worker or self.schedule
        if self.member:
            subject = f"{subject}\x1f{self.target}\x1f{self.member}"
        return hashlib.sha256(f"{environment}\x1f{self.kind}\x1f{subject}".encode()).hexdigest()


@dataclass
class Observation:
    """What one check saw: conditions present, and fingerprints it could not decide this time."""

    conditions: list[Condition] = field(default_factory=list)
    #: Subjects whose state is unknown (a probe raced a run): their findings are left as they are.
    undecided: set[str] = field(default_factory=set)


@dataclass
class DriftReport:
    checks: list[str]
    seen: list[Finding] = field(default_factory=list)
    opened: list[Finding] = field(default_factory=list)
    resolved: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "findings": [finding_as_dict(f) for f in self.seen],
            "opened": [f.pk for f in self.opened],
            "resolved": [f.pk for f in self.resolved],
        }


# -- the checks ------------------------------------------------------------------------------------


def definition_observe() -> Observation:
    """Checksum mismatches, applied changes gone from code, new changes ordered before applied ones."""
    plan = pipeline_plan()
    seen = Observation()
    for item in plan.items:
        change = item.change
        where = {"change_id": change.id, "target": change.target, "stage": change.stage}
        if item.recorded_checksum and item.recorded_checksum != change.checksum:
            seen.conditions.append(
                Condition(
                    "CHECKSUM_MISMATCH",
                    f"{change.id} was edited after it was applied",
                    {"recorded_checksum": item.recorded_checksum, "code_checksum": change.checksum, "path": change.path},
                    **where,
                )
            )
        if item.action == Action.OUT_OF_ORDER:
            seen.conditions.append(Condition("OUT_OF_ORDER", f"{change.id} {item.reason}", {"order": change.order, "reason": item.reason}, **where))
    # Django migrations (drift.django_migrations): the recorder against the ledger, and an edited
    # applied migration the plan does not already show.
    django = django_drift_observe()
    already = {(c.kind, c.change_id) for c in seen.conditions}
    seen.conditions += [Condition(**c) for c in django.conditions if (c["kind"], c["change_id"]) not in already]
    seen.undecided |= django.undecided
    for row in plan.missing:
        seen.conditions.append(
            Condition(
                "MISSING_FROM_CODE",
                f"{row.change_id} is {row.state} but no longer in code",
                {"state": row.state, "checksum": row.checksum, "entry_id": row.entry_id},
                change_id=row.change_id,
                target=row.target,
                stage=row.stage,
            )
        )
    return seen


def _live_runs(now) -> set[str]:
    """Runs that are still alive: the lock holder's (lease not expired), or a RUNNING run whose
    heartbeat is fresh."""
    alive = {
        str(pk)
        for pk in Run.objects.filter(
            environment=current_environment(),
            status=Run.Status.RUNNING,
            heartbeat_at__gte=now - timedelta(seconds=settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT),
        ).values_list("pk", flat=True)
    }
    holder = lock_backend().holder()
    if holder is not None and holder.run_id and not holder.expired:
        alive.add(holder.run_id)
    return alive


def operational_observe() -> Observation:
    """STARTED or ROLLBACK_STARTED with no live run, runs whose heartbeat stopped, a lock past its lease."""
    now = timezone.now()
    seen = Observation()
    alive = _live_runs(now)
    for row in ChangeState.objects.filter(state__in=[S.STARTED, S.ROLLBACK_STARTED]).order_by("change_id"):
        if row.run_id is not None and str(row.run_id) in alive:
            continue
        seen.conditions.append(
            Condition(
                "STALE_STARTED",
                f"{row.change_id} is {row.state} and no live run is working on it",
                {"state": row.state, "run_id": str(row.run_id) if row.run_id else None, "entry_id": row.entry_id},
                change_id=row.change_id,
                target=row.target,
                stage=row.stage,
            )
        )
    dead_after = now - timedelta(seconds=settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT)
    holder = lock_backend().holder()
    held_by = holder.run_id if holder is not None and not holder.expired else ""
    for run in Run.objects.filter(environment=current_environment(), status=Run.Status.RUNNING, heartbeat_at__lt=dead_after):
        if str(run.id) == held_by:
            continue
        seen.conditions.append(
            Condition(
                "DEAD_RUN",
                f"run {run.id} has sent no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC",
                {"heartbeat_at": run.heartbeat_at.isoformat(), "host": run.host, "pid": run.pid, "current_change": run.current_change},
                run_id=str(run.id),
            )
        )
    if holder is not None and holder.expired:
        seen.conditions.append(
            Condition(
                "LOCK_PAST_LEASE",
                f"lock {holder.name} is held by {holder.holder} ({holder.host} pid {holder.pid}) past its lease",
                holder.as_dict(),
                lock_name=f"{holder.name}#{holder.token}",
            )
        )
    for view in workers_list(live_only=True):
        if view.code == "stale":
            seen.conditions.append(
                _worker_stale_condition(view.worker.name, view.worker.digest, evidence={"host": view.worker.host, "pid": view.worker.pid})
            )
    return seen


def _worker_stale_condition(worker: str, digest: str, *, evidence: dict[str, Any]) -> Condition:
    return Condition(
        "worker.stale",
        f"worker {worker} runs pipeline {digest[:12]}, not the current one: it hands its tasks back and judges nothing",
        {"worker": worker, "digest": digest, **evidence},
        worker=worker,
    )


def probe_run(change, target, *, timeout: float) -> tuple[bool | None, str]:
    """Run ``change``'s verify against a fresh instance of ``target`` in a thread; give up after
    ``timeout`` seconds. Returns (present, error): present is None when the probe raised or hung."""
    return verify_probe(
        change,
        lambda: type(target)(target.name, target.config),
        ProbeContext(change.id, current_environment()),
        timeout=timeout,
        name=f"flamingock-probe-{change.id}",
    )


def live_observe() -> Observation:
    """Each applied change that defines verify, probed against its live target, without the lock."""
    snapshot = change_states()
    pipeline = pipeline_load()
    systems = target_systems()
    timeout = settings.FLAMINGOCK_DRIFT_PROBE_TIMEOUT
    seen = Observation()
    for change in pipeline.by_id.values():
        state = snapshot.get(change.id)
        if state is None or state.state not in APPLIED_STATES or not change.has_verify or not change.applies_in(current_environment()):
            continue
        if state.checksum and state.checksum != change.checksum:
            continue  # definition drift already: this code's probe is not the applied change's
        system = systems.get(change.target)
        if system is None:
            continue
        present, error = probe_run(change, system, timeout=timeout)
        latest = ChangeState.objects.filter(change_id=change.id).values_list("entry_id", flat=True).first()
        if latest != state.entry_id:
            # A run moved the change while it was probed: what the probe saw says nothing.
            logger.info("live drift: %s moved during its probe (entry %s -> %s); result dropped", change.id, state.entry_id, latest)
            seen.undecided.add(change.id)
            continue
        where = {"change_id": change.id, "target": change.target, "stage": change.stage}
        evidence = {"state": state.state, "entry_id": state.entry_id, "timeout_seconds": timeout}
        if present is None:
            seen.undecided.add(change.id)  # its VERIFY_FAILED finding, if any, stays as it is
            seen.conditions.append(
                Condition("PROBE_FAILED", f"the verify probe of {change.id} failed: {error}", {**evidence, "error": error}, **where)
            )
        elif not present:
            seen.conditions.append(Condition("VERIFY_FAILED", f"the effect of {change.id} is absent from {change.target}", evidence, **where))
    return seen


_OBSERVERS = {
    Finding.Check.DEFINITION: definition_observe,
    Finding.Check.OPERATIONAL: operational_observe,
    Finding.Check.LIVE: live_observe,
}

#: The kinds each check owns: it resolves only findings of its own kinds.
_KINDS = {
    Finding.Check.DEFINITION: {"CHECKSUM_MISMATCH", "MISSING_FROM_CODE", "OUT_OF_ORDER", *DJANGO_DRIFT_KINDS},
    Finding.Check.OPERATIONAL: {"STALE_STARTED", "DEAD_RUN", "LOCK_PAST_LEASE", "worker.stale"},
    Finding.Check.LIVE: {"VERIFY_FAILED", "PROBE_FAILED"},
}


# -- services --------------------------------------------------------------------------------------


def drift_check(*, kind: str = "all", actor: Actor = DRIFT_CHECKER) -> DriftReport:
    """Run one check (``definition``, ``operational``, ``live``), the two cheap ones
    (``scheduled``), or all three (``all``), and bring the findings up to date."""
    names = {
        "all": list(CHECKS),
        "scheduled": [Finding.Check.DEFINITION, Finding.Check.OPERATIONAL],
    }.get(kind.lower()) or [kind.upper()]
    if any(name not in _OBSERVERS for name in names):
        raise ActionRefused(f"unknown drift check {kind!r} (definition, operational, live, scheduled or all)")
    # A stale worker judges nothing (docs/semantics.md, Workers): its task is handed back.
    worker_stale_check()
    report = DriftReport(checks=[str(name) for name in names])
    for name in names:
        _reconcile(Finding.Check(name), _OBSERVERS[name](), actor=actor, report=report)
    return report


def worker_stale_found(*, stale: WorkerStale, task: str, run_id: str | None = None, handbacks: int = 0) -> Finding:
    """A stale worker gave a task up after handing it back: the ``worker.stale`` finding names it.
    Opening it judges nothing of the pipeline; a current worker's operational check resolves it
    once the worker stops or runs the current code."""
    condition = _worker_stale_condition(
        stale.worker,
        stale.digest,
        evidence={"current": stale.current, "task": task, "handbacks": handbacks, **({"run_id": run_id} if run_id else {})},
    )
    finding, _opened = _sighting(
        Finding.Check.OPERATIONAL,
        condition,
        environment=stale.environment,
        now=timezone.now(),
        actor=Actor(name=f"worker:{stale.worker}", via="worker"),
    )
    return finding


def schedule_changed_found(*, actor: Actor, before: dict | None, after: dict | None) -> Finding:
    """A person disabled, edited or deleted a guarded schedule (the chain verification or a drift
    check; ``services.schedules.GUARDED_TASKS``): ``schedule.changed`` records who, what, before and
    after, and a ``SCHEDULE_CHANGED`` finding (one per schedule, reopened by a later change) stays
    open until someone resolves it; no check resolves it on its own."""
    subject = after or before or {}
    with transaction.atomic():
        change = schedule_change_audit(actor=actor, before=before, after=after)
        condition = Condition(
            kind=Finding.Kind.SCHEDULE_CHANGED,
            summary=f"{actor.name} {change} the schedule {subject.get('name', '')!r} ({subject.get('task', '')})",
            evidence={
                "schedule": subject.get("name", ""),
                "task": subject.get("task", ""),
                "change": change,
                "by": actor.name,
                "before": before,
                "after": after,
            },
            schedule=subject.get("name", "") or str(subject.get("id", "")),
        )
        finding, _opened = _sighting(Finding.Check.OPERATIONAL, condition, environment=current_environment(), now=timezone.now(), actor=actor)
    return finding


def migrate_override_found(*, actor: Actor, alias: str, target: str, forwards: list[str], backwards: list[str], reason: str) -> Finding:
    """An operator forced a plain ``migrate`` over governed migrations in a protected environment
    (docs/django-migrations.md, "No way around it"): ``migrate.override`` records who, why and which
    migrations, before migrate runs, and a ``migrate.override`` finding (one per database, reopened
    by a later override) stays open until someone resolves it; no check resolves it on its own."""
    reason = require_reason(reason)
    environment = current_environment()
    with transaction.atomic():
        audit_record(
            event="migrate.override",
            actor=actor,
            environment=environment,
            change=ChangeRef(id="", target=target) if target else None,
            reason=reason,
            details={"alias": alias, "apply": forwards, "unapply": backwards},
        )
        condition = Condition(
            kind=Finding.Kind.MIGRATE_OVERRIDE,
            summary=f"{actor.name} forced a plain migrate on {alias} over {len(forwards) + len(backwards)} governed migration(s): {reason}",
            evidence={"alias": alias, "apply": forwards, "unapply": backwards, "by": actor.name, "reason": reason},
            change_id=f"django:{alias}",
            target=target,
        )
        finding, _opened = _sighting(Finding.Check.OPERATIONAL, condition, environment=environment, now=timezone.now(), actor=actor)
    return finding


def _reconcile(check: str, observation: Observation, *, actor: Actor, report: DriftReport) -> None:
    environment = current_environment()
    now = timezone.now()
    present = set()
    for condition in observation.conditions:
        finding, opened = _sighting(check, condition, environment=environment, now=now, actor=actor)
        present.add(finding.pk)
        report.seen.append(finding)
        if opened:
            report.opened.append(finding)
    # Members' findings are the member drift check's own (``member_drift_record``).
    cleared = Finding.objects.filter(environment=environment, check_name=check, kind__in=_KINDS[check], status__in=Finding.ACTIVE, member="").exclude(
        pk__in=present
    )
    if observation.undecided:
        cleared = cleared.exclude(change_id__in=observation.undecided)
    for pk in cleared.values_list("pk", flat=True):
        finding = _finding_close(
            finding_id=pk, status=Finding.Status.AUTO_RESOLVED, actor=actor, reason=f"the {check.lower()} check no longer sees it", active_only=True
        )
        if finding is not None:
            report.resolved.append(finding)


def _sighting(check: str, condition: Condition, *, environment: str, now, actor: Actor, notify: bool = True) -> tuple[Finding, bool]:
    """Record one sighting; True when the finding is new or reopened (the only times it notifies;
    ``notify=False``: the caller notifies, once for many)."""
    fingerprint = condition.fingerprint(environment)
    values = {
        "summary": condition.summary,
        "last_evidence": condition.evidence,
        "target": condition.target,
    }
    with transaction.atomic():
        finding = Finding.objects.select_for_update().filter(fingerprint=fingerprint).first()
        if finding is None:
            try:
                with transaction.atomic():
                    finding = Finding.objects.create(
                        fingerprint=fingerprint,
                        check_name=check,
                        kind=condition.kind,
                        environment=environment,
                        change_id=condition.change_id,
                        run_id=condition.run_id,
                        lock_name=condition.lock_name,
                        member=condition.member,
                        first_seen=now,
                        last_seen=now,
                        status_changed_at=now,
                        status_by=actor.name,
                        **values,
                    )
            except IntegrityError:  # another check created it meanwhile: this is a sighting of it
                finding = Finding.objects.select_for_update().get(fingerprint=fingerprint)
            else:
                _audit(finding, "drift.detected", actor=actor, reason=condition.summary, stage=condition.stage, extra={"new": True})
                if notify:
                    _notify_on_commit(finding)
                return finding, True
        reopened = not finding.active
        finding.last_seen = now
        finding.times_seen += 1
        for key, value in values.items():
            setattr(finding, key, value)
        update = ["last_seen", "times_seen", *values]
        if reopened:
            finding.status, finding.status_changed_at, finding.status_by, finding.status_reason = Finding.Status.OPEN, now, actor.name, ""
            update += ["status", "status_changed_at", "status_by", "status_reason"]
        finding.save(update_fields=update)
        if reopened:
            _audit(finding, "drift.detected", actor=actor, reason=condition.summary, stage=condition.stage, extra={"reopened": True})
            if notify:
                _notify_on_commit(finding)
    return finding, reopened


def _finding_close(*, finding_id: int, status: str, actor: Actor, reason: str, active_only: bool) -> Finding | None:
    event = "drift.acknowledged" if status == Finding.Status.ACKNOWLEDGED else "drift.resolved"
    with transaction.atomic():
        finding = Finding.objects.select_for_update().filter(pk=finding_id).first()
        if finding is None:
            raise NotFound(f"no finding {finding_id}")
        if not finding.active:
            if active_only:
                return None
            raise ActionRefused(f"finding {finding_id} is already {finding.get_status_display().lower()}")
        if status == Finding.Status.ACKNOWLEDGED and finding.status == Finding.Status.ACKNOWLEDGED:
            raise ActionRefused(f"finding {finding_id} is already acknowledged")
        finding.status, finding.status_changed_at, finding.status_by, finding.status_reason = status, timezone.now(), actor.name, reason
        finding.save(update_fields=["status", "status_changed_at", "status_by", "status_reason"])
        _audit(finding, event, actor=actor, reason=reason, extra={"status": status})
    return finding


def _check_may_act(actor: Actor) -> None:
    if actor.user_id is None:
        return  # the local operator of an unprotected environment, or a service identity
    user = get_user_model().objects.get(pk=actor.user_id)
    if not user.has_perm("changes_app.acknowledge_finding"):
        raise PermissionRefused(f"{actor.name} may not acknowledge or resolve drift findings")


def finding_acknowledge(*, finding_id: int, actor: Actor, reason: str) -> Finding:
    """A person knows about the finding: it stays active (checks keep updating it) but quiet."""
    _check_may_act(actor)
    return _finding_close(finding_id=finding_id, status=Finding.Status.ACKNOWLEDGED, actor=actor, reason=require_reason(reason), active_only=False)


def finding_resolve(*, finding_id: int, actor: Actor, reason: str) -> Finding:
    """A person says the condition is dealt with; a check that sees it again reopens it."""
    _check_may_act(actor)
    return _finding_close(finding_id=finding_id, status=Finding.Status.RESOLVED, actor=actor, reason=require_reason(reason), active_only=False)


def finding_accept_baseline(*, finding_id: int, actor: Actor, reason: str, source: str):
    """The "accept as baseline" path of a checksum mismatch: an ACCEPT_CHECKSUM request (approved
    as the policy says); the next definition check resolves the finding once it is re-baselined."""
    finding = Finding.objects.filter(pk=finding_id).first()
    if finding is None:
        raise NotFound(f"no finding {finding_id}")
    if finding.kind != Finding.Kind.CHECKSUM_MISMATCH:
        raise ActionRefused(f"finding {finding_id} is not a checksum mismatch; only those can be accepted as a baseline")
    return request_submit(
        kind=ChangeRequest.Kind.ACCEPT_CHECKSUM, change_id=finding.change_id, actor=actor, reason=require_reason(reason), source=source
    )


def findings_open(*, include_acknowledged: bool = False):
    statuses = Finding.ACTIVE if include_acknowledged else {Finding.Status.OPEN}
    return Finding.objects.filter(environment=current_environment(), status__in=statuses).order_by("check_name", "kind", "change_id")


def _audit(finding: Finding, event: str, *, actor: Actor, reason: str, stage: str = "", extra: dict | None = None) -> None:
    # The change is named in the details, not as the entry's change: a change's own history stays
    # the story of what was done to it.
    audit_record(
        event=event,
        actor=actor,
        environment=finding.environment,
        change=ChangeRef(id="", target=finding.target) if finding.target else None,
        run_id=finding.run_id,
        member=finding.member or None,
        reason=reason,
        details={
            "finding": finding.pk,
            "kind": finding.kind,
            "check": finding.check_name,
            "fingerprint": finding.fingerprint,
            **({"change_id": finding.change_id, "stage": stage} if finding.change_id else {}),
            **(extra or {}),
        },
    )


#: The kinds the member drift check records, by the check they belong to.
MEMBER_KINDS = {
    Finding.Kind.CHECKSUM_MISMATCH: Finding.Check.DEFINITION,
    Finding.Kind.VERIFY_FAILED: Finding.Check.LIVE,
    Finding.Kind.PROBE_FAILED: Finding.Check.LIVE,
}


def member_drift_record(*, observed: dict[str, Any], actor: Actor = DRIFT_CHECKER) -> DriftReport:
    """Bring the members' findings up to date from one batch of the member drift check
    (``fleets.drift.members_drift_observe``): one finding per member, change and kind, deduplicated
    as any finding; the batch's members' findings it no longer sees resolved; one notification per
    target group for the findings the batch opened, not one per member."""
    environment = current_environment()
    now = timezone.now()
    report = DriftReport(checks=["MEMBERS"])
    present: set[int] = set()
    unknown = sorted({seen["kind"] for seen in observed.get("conditions", [])} - set(MEMBER_KINDS))
    if unknown:
        raise ActionRefused(f"the member drift check does not record {', '.join(unknown)}")
    for seen in observed.get("conditions", []):
        condition = Condition(**{key: seen[key] for key in ("kind", "summary", "evidence", "change_id", "target", "stage", "member")})
        finding, opened = _sighting(MEMBER_KINDS[condition.kind], condition, environment=environment, now=now, actor=actor, notify=False)
        present.add(finding.pk)
        report.seen.append(finding)
        if opened:
            report.opened.append(finding)
    undecided = {(row["target"], row["member"], row["change_id"]) for row in observed.get("undecided", [])}
    for target, members in _by_target(observed.get("checked", [])).items():
        cleared = Finding.objects.filter(
            environment=environment, target=target, member__in=members, kind__in=list(MEMBER_KINDS), status__in=Finding.ACTIVE
        ).exclude(pk__in=present)
        for pk, member, change_id in cleared.values_list("pk", "member", "change_id"):
            if (target, member, change_id) in undecided:
                continue
            finding = _finding_close(
                finding_id=pk, status=Finding.Status.AUTO_RESOLVED, actor=actor, reason="the member drift check no longer sees it", active_only=True
            )
            if finding is not None:
                report.resolved.append(finding)
    opened: dict[str, list[int]] = {}
    for finding in report.opened:
        opened.setdefault(finding.target, []).append(finding.pk)
    for target, finding_ids in opened.items():
        findings_notify_grouped(target=target, finding_ids=finding_ids)
    return report


def _by_target(rows: list[dict[str, Any]]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row["target"], []).append(row["member"])
    return grouped


def _notify_on_commit(finding: Finding) -> None:
    pk = finding.pk
    transaction.on_commit(lambda: finding_notify(finding_id=pk))


__all__ = [
    "DriftReport",
    "PipelineInvalid",
    "drift_check",
    "finding_accept_baseline",
    "finding_acknowledge",
    "finding_resolve",
    "findings_open",
    "member_drift_record",
    "schedule_changed_found",
    "worker_stale_found",
]
