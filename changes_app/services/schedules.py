"""Periodic tasks, created idempotently after ``migrate``: never deleted or overwritten, so an
operator's edits in the admin (interval, enabled) survive every deploy."""

from __future__ import annotations

#: name -> (task, every seconds)
DEFAULT_SCHEDULES = {
    "flamingock: reap dead and lost runs": ("flamingock.runs_reap", 60),
    "flamingock: expire requests": ("flamingock.requests_expire", 300),
    "flamingock: sign the audit chain head": ("flamingock.audit_checkpoint", 300),
    "flamingock: verify the audit chain": ("flamingock.audit_verify", 86400),
    "flamingock: definition and operational drift": ("flamingock.drift_check", 300),
    "flamingock: live drift": ("flamingock.drift_check_live", 3600),
}


def schedules_ensure(**kwargs) -> list[str]:
    """Create the missing default schedules; returns the names created."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    created = []
    for name, (task, seconds) in DEFAULT_SCHEDULES.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
        created.append(name)
    return created
