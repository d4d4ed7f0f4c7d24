"""Workers in the admin: a read-only list of what each worker's heartbeat said, live or not, and
whether its code is the current pipeline (docs/semantics.md, Workers)."""

from django.contrib import admin
from django.utils import timezone

from changes_app.admin.common import ReadOnlyMixin, badge
from changes_app.models import Worker
from changes_app.services.workers import pipeline_current, worker_live, workers_may_view

CODE_COLOURS = {"current": "#2e7d32", "stale": "#c62828", "unknown": "#757575"}


@admin.register(Worker)
class WorkerAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("name", "host", "pid", "environment", "short_digest", "version", "heartbeat_at", "liveness", "code")
    list_filter = ("environment",)
    search_fields = ("name", "host", "digest")
    actions = None
    fields = ("name", "host", "pid", "environment", "queue", "digest", "version", "started_at", "heartbeat_at", "stopped_at")
    readonly_fields = fields

    @admin.display(description="digest", ordering="digest")
    def short_digest(self, obj):
        return obj.digest[:12]

    @admin.display(description="heartbeat")
    def liveness(self, obj):
        if obj.stopped_at is not None:
            return badge("stopped", "#757575")
        return badge("live", "#2e7d32") if worker_live(obj, now=timezone.now()) else badge("silent", "#ef6c00")

    @admin.display(description="code")
    def code(self, obj):
        current = pipeline_current(environment=obj.environment)
        state = "unknown" if current is None else ("current" if current.digest == obj.digest else "stale")
        return badge(state, CODE_COLOURS[state])

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff and workers_may_view(user=request.user)

    def has_module_permission(self, request):
        return self.has_view_permission(request)
