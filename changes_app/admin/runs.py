"""Runs in the admin: the list, a run's progress and results, starting and cancelling runs, the lock."""

from django.contrib import admin
from django.urls import path

from changes_app import services
from changes_app.admin import views
from changes_app.admin.common import STATUS_COLOURS, ReadOnlyMixin, admin_view, badge
from changes_app.models import Run


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("short_id", "kind", "status_badge", "source", "actor", "environment", "created_at", "progress", "change_id")
    list_filter = ("status", "kind", "source", "environment")
    search_fields = ("=id", "actor", "change_id")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = None
    fields = (
        "id", "kind", "status", "status_reason", "source", "environment", "actor", "host", "pid",
        "change_id", "reason", "pipeline_digest", "fencing_token", "created_at",
        "started_at", "finished_at", "heartbeat_at", "cancel_requested_at", "cancel_requested_by",
    )  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/changes_app/run/change_list.html"
    change_form_template = "admin/changes_app/run/change_form.html"

    def get_queryset(self, request):
        return views.runs_seen(request.user, super().get_queryset(request))

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "may_run": views.operates_any(request.user), "lock_holder": services.lock_status()}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "run": run,
            "may_cancel": run is not None and not run.finished and self.may_cancel(request, run),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="id")
    def short_id(self, obj):
        return str(obj.id)[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status, STATUS_COLOURS.get(obj.status, "#757575"))

    @admin.display(description="progress")
    def progress(self, obj):
        return f"{obj.progress_done}/{obj.progress_total}" if obj.progress_total else "-"

    def has_view_permission(self, request, obj=None):
        if request.user.has_perm("changes_app.view_run"):
            return True
        if obj is None:
            return views.targets_seen(request.user, "changes_app.view_run") != set()
        return views.runs_seen(request.user, Run.objects.filter(pk=obj.pk)).exists()

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def may_cancel(self, request, run) -> bool:
        return run.started_by_id == request.user.pk or request.user.has_perm("changes_app.change_run")

    def get_urls(self):
        return [
            path("run/", admin_view(self, views.run_pipeline_view), name="changes_app_run_start"),
            path("lock/", admin_view(self, views.lock_view), name="changes_app_run_lock"),
            path("<str:object_id>/progress/", admin_view(self, views.run_progress_view), name="changes_app_run_progress"),
            path("<str:object_id>/cancel/", admin_view(self, views.run_cancel_view), name="changes_app_run_cancel"),
            *super().get_urls(),
        ]
