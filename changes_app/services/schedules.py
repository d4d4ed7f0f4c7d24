"""Periodic tasks, created idempotently after ``migrate``: never deleted or overwritten, so an
operator's edits in the admin (interval, enabled) survive every deploy; an edit of a schedule that
guards the product (the chain verification, the drift checks) is recorded as ``schedule.changed``."""

from __future__ import annotations

from django.db import connections

from audit_app.services import Actor, audit_record
from changes_app.conf import current_environment

#: name -> (task, every seconds)
DEFAULT_SCHEDULES = {
    "flamingock: reap dead and lost runs": ("flamingock.runs_reap", 60),
    "flamingock: expire requests": ("flamingock.requests_expire", 300),
    "flamingock: overdue break-glass reviews": ("flamingock.reviews_overdue", 300),
    "flamingock: sign the audit chain head": ("flamingock.audit_checkpoint", 300),
    "flamingock: verify the audit chain": ("flamingock.audit_verify", 86400),
    "flamingock: definition and operational drift": ("flamingock.drift_check", 300),
    "flamingock: live drift": ("flamingock.drift_check_live", 3600),
    "flamingock: discover fleet members": ("flamingock.fleet_members_discover", 600),
    "flamingock: fleet member drift": ("flamingock.fleet_drift_check", 300),
}


def schedules_ensure(**kwargs) -> list[str]:
    """Create the missing default schedules; returns the names created."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    # post_migrate is sent after every migrate, also one of another app before beat's tables exist
    # (a host migrating app by app): the schedules are made by the migrate that makes the tables.
    if PeriodicTask._meta.db_table not in connections[kwargs.get("using") or "default"].introspection.table_names():
        return []
    created = []
    for name, (task, seconds) in DEFAULT_SCHEDULES.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
        created.append(name)
    return created


# -- the schedules that guard the product: changing one is evidence -----------------------------------

#: The tasks whose schedules keep the trail and the pipeline watched: the chain verification and the
#: drift checks. Disabling, editing or deleting one writes ``schedule.changed`` and raises a
#: ``SCHEDULE_CHANGED`` drift finding (changes_app.drift.checks.schedule_changed_found).
GUARDED_TASKS = frozenset({"flamingock.audit_verify", "flamingock.drift_check", "flamingock.drift_check_live", "flamingock.fleet_drift_check"})


def schedule_snapshot(task) -> dict:
    """What a periodic task is, as ``schedule.changed`` records it before and after a change."""
    when = task.interval or task.crontab or task.solar or task.clocked
    return {
        "id": task.pk,
        "name": task.name,
        "task": task.task,
        "enabled": task.enabled,
        "schedule": str(when) if when is not None else "",
        "args": task.args,
        "kwargs": task.kwargs,
        "queue": task.queue or "",
        "one_off": task.one_off,
        "expires": task.expires.isoformat() if task.expires else None,
        "start_time": task.start_time.isoformat() if task.start_time else None,
    }


def schedule_guarded(*snapshots: dict | None) -> bool:
    """Whether a change between these snapshots touches a guarded schedule (before or after it)."""
    return any(snapshot is not None and snapshot.get("task") in GUARDED_TASKS for snapshot in snapshots)


def schedule_change_kind(before: dict | None, after: dict | None) -> str:
    """``deleted``, ``disabled``, ``enabled`` or ``edited``: the word the trail and the finding use."""
    if after is None:
        return "deleted"
    if before is not None and before.get("enabled") and not after.get("enabled"):
        return "disabled"
    if before is not None and not before.get("enabled") and after.get("enabled"):
        return "enabled"
    return "edited"


def schedule_change_audit(*, actor: Actor, before: dict | None, after: dict | None) -> str:
    """Write ``schedule.changed`` (who, what, before, after); returns the kind of change. Called by
    the drift finding that the change raises, in its transaction."""
    change = schedule_change_kind(before, after)
    subject = after or before or {}
    audit_record(
        event="schedule.changed",
        actor=actor,
        environment=current_environment(),
        details={"schedule": subject.get("name", ""), "task": subject.get("task", ""), "change": change, "before": before, "after": after},
    )
    return change
