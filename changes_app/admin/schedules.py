"""django-celery-beat's periodic tasks and schedules on the product's site, with the schedules that
guard the product watched: disabling, editing or deleting the chain verification or a drift check
(directly, or through the interval, crontab, solar or clocked schedule it uses) writes
``schedule.changed`` (who, what, before, after) and raises a drift finding."""

from django.contrib import admin
from django.db import transaction
from django_celery_beat.admin import ClockedScheduleAdmin, CrontabScheduleAdmin, IntervalScheduleAdmin, PeriodicTaskAdmin, SolarScheduleAdmin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from changes_app.admin.views import actor_of
from changes_app.drift.checks import schedule_changed_found
from changes_app.services.schedules import schedule_guarded, schedule_snapshot


def schedule_reported(request, before: dict | None, after: dict | None) -> None:
    """Report a change of a periodic task when it changed something and touched a guarded one."""
    if before != after and schedule_guarded(before, after):
        schedule_changed_found(actor=actor_of(request), before=before, after=after)


class WatchedPeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's own screens; every path that changes a row (the form, delete, the bulk
    delete and the enable, disable and toggle actions) reports a change to a guarded schedule."""

    def save_model(self, request, obj, form, change):
        stored = PeriodicTask.objects.filter(pk=obj.pk).first() if change and obj.pk else None
        before = schedule_snapshot(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        if before is not None:
            self._report(request, before, schedule_snapshot(obj))

    def delete_model(self, request, obj):
        before = schedule_snapshot(obj)
        super().delete_model(request, obj)
        self._report(request, before, None)

    def delete_queryset(self, request, queryset):
        befores = [schedule_snapshot(task) for task in queryset]
        super().delete_queryset(request, queryset)
        for before in befores:
            self._report(request, before, None)

    @admin.action(description=PeriodicTaskAdmin.enable_tasks.short_description)
    def enable_tasks(self, request, queryset):
        self._bulk(request, queryset, super().enable_tasks)

    @admin.action(description=PeriodicTaskAdmin.disable_tasks.short_description)
    def disable_tasks(self, request, queryset):
        self._bulk(request, queryset, super().disable_tasks)

    @admin.action(description=PeriodicTaskAdmin.toggle_tasks.short_description)
    def toggle_tasks(self, request, queryset):
        self._bulk(request, queryset, super().toggle_tasks)

    def _bulk(self, request, queryset, action) -> None:
        with transaction.atomic():
            befores = {task.pk: schedule_snapshot(task) for task in queryset}
            action(request, queryset)
            for task in PeriodicTask.objects.filter(pk__in=befores):
                self._report(request, befores[task.pk], schedule_snapshot(task))

    def _report(self, request, before: dict | None, after: dict | None) -> None:
        schedule_reported(request, before, after)


class WatchedScheduleMixin:
    """An interval, crontab, solar or clocked schedule is shared by the tasks that use it: editing it
    edits them, deleting it deletes them (a cascade). Each guarded task so changed is reported."""

    #: The PeriodicTask field that points at this kind of schedule.
    task_field = ""

    def _snapshots(self, schedule) -> dict[int, dict]:
        tasks = PeriodicTask.objects.filter(**{self.task_field: schedule}).select_related(self.task_field)
        return {task.pk: schedule_snapshot(task) for task in tasks}

    def save_model(self, request, obj, form, change):
        befores = self._snapshots(obj) if change and obj.pk else {}
        super().save_model(request, obj, form, change)
        afters = self._snapshots(obj)
        for pk, before in befores.items():
            self._report(request, before, afters.get(pk))

    def delete_model(self, request, obj):
        befores = self._snapshots(obj)
        super().delete_model(request, obj)
        for before in befores.values():
            self._report(request, before, None)

    def delete_queryset(self, request, queryset):
        befores = [before for schedule in queryset for before in self._snapshots(schedule).values()]
        super().delete_queryset(request, queryset)
        for before in befores:
            self._report(request, before, None)

    def _report(self, request, before: dict | None, after: dict | None) -> None:
        schedule_reported(request, before, after)


class WatchedIntervalScheduleAdmin(WatchedScheduleMixin, IntervalScheduleAdmin):
    task_field = "interval"


class WatchedCrontabScheduleAdmin(WatchedScheduleMixin, CrontabScheduleAdmin):
    task_field = "crontab"


class WatchedSolarScheduleAdmin(WatchedScheduleMixin, SolarScheduleAdmin):
    task_field = "solar"


class WatchedClockedScheduleAdmin(WatchedScheduleMixin, ClockedScheduleAdmin):
    task_field = "clocked"


for model, model_admin in (
    (PeriodicTask, WatchedPeriodicTaskAdmin),
    (IntervalSchedule, WatchedIntervalScheduleAdmin),
    (CrontabSchedule, WatchedCrontabScheduleAdmin),
    (SolarSchedule, WatchedSolarScheduleAdmin),
    (ClockedSchedule, WatchedClockedScheduleAdmin),
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
