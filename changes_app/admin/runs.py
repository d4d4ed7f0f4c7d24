"""Runs in the admin: the list, a run's progress and results, starting and cancelling runs, the lock."""

from django.contrib import admin, messages
from django.urls import path

from changes_app import services
from changes_app.admin import labels, views
from changes_app.admin.common import STATUS_COLOURS, ReadOnlyMixin, admin_view, badge
from changes_app.governance.visibility import change_targets_seen, run_shown
from changes_app.models import Run


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("short_id", "kind", "status_badge", "outcome", "source", "actor", "environment", "created_at", "progress", "change_id")
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

    def get_object(self, request, object_id, from_field=None):
        """The run as this user may see it: only the results of changes on target systems they see;
        ``hidden_results`` counts the others (``visibility.run_shown``). Never saved."""
        run = super().get_object(request, object_id, from_field)
        return run_shown(run, change_targets_seen(request.user)) if run is not None else None

    def changelist_view(self, request, extra_context=None):
        may_run = views.operates_any(request.user)
        # Before "Run the pipeline" queues anything: say so when no live worker runs this pipeline.
        workers_warning = services.workers_warning() if may_run else ""
        if workers_warning and request.method == "GET":
            self.message_user(request, workers_warning, messages.WARNING)
        extra_context = {**(extra_context or {}), "may_run": may_run, "lock_holder": services.lock_status(), "workers_warning": workers_warning}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "run": run,
            "may_cancel": run is not None and not run.finished and self.may_cancel(request, run),
        }
        if run is not None:
            extra_context.update(views.run_page(request.user, run))
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="id")
    def short_id(self, obj):
        return str(obj.id)[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(labels.label("run_status", obj.status), STATUS_COLOURS.get(obj.status, "#757575"))

    @admin.display(description="reason")
    def outcome(self, obj):
        """Why a run ended as it did (an abort's reason above all), in words, not only its status."""
        reason = obj.status_reason or ""
        return reason if len(reason) <= 160 else reason[:159] + "…"

    @admin.display(description="progress")
    def progress(self, obj):
        return labels.progress_text(obj.progress_done, obj.progress_total)

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
