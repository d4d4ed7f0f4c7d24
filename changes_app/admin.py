"""Changes, runs, target systems and tokens in the admin.

Everything that changes the ledger goes through services; the admin never writes audit rows or
change states itself.
"""

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from audit_app.models import AuditEntry, ChangeState

from .identity import token_create
from .models import ApiToken, ChangeRecord, Run, TargetSystem

STATE_COLOURS = {
    "APPLIED": "#2e7d32",
    "MANUAL_MARKED_AS_APPLIED": "#2e7d32",
    "SKIPPED": "#757575",
    "STARTED": "#ef6c00",
    "ROLLBACK_STARTED": "#ef6c00",
    "FAILED": "#c62828",
    "ROLLBACK_FAILED": "#c62828",
    "ROLLED_BACK": "#1565c0",
    "MANUAL_MARKED_AS_ROLLED_BACK": "#1565c0",
}


def state_badge(state: str):
    if not state:
        return format_html('<span style="color:#757575">{}</span>', "not applied")
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 6px;border-radius:8px;font-size:11px">{}</span>',
        STATE_COLOURS.get(state, "#424242"),
        state,
    )


class ReadOnlyMixin:
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("change_id", "stage", "order", "target", "latest_state", "checksum_status", "author", "removed_at")
    list_filter = ("stage", "target", "kind", "transactional")
    search_fields = ("change_id", "author", "description")
    ordering = ("stage", "order")
    fields = (
        "change_id", "stage", "order", "author", "target", "kind", "template", "description", "path", "line",
        "checksum", "transactional", "recovery", "environments", "has_rollback", "has_verify",
        "first_seen_at", "synced_at", "removed_at", "source_code", "history",
    )  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request)

    def changelist_view(self, request, extra_context=None):
        # One query for the states of every change on the page instead of one per row.
        self._states = {row.change_id: row for row in ChangeState.objects.all()}
        return super().changelist_view(request, extra_context)

    def _state(self, obj):
        states = getattr(self, "_states", None)
        if states is None:
            return ChangeState.objects.filter(change_id=obj.change_id).first()
        return states.get(obj.change_id)

    @admin.display(description="state")
    def latest_state(self, obj):
        state = self._state(obj)
        return state_badge(state.state if state else "")

    @admin.display(description="checksum")
    def checksum_status(self, obj):
        state = self._state(obj)
        if state is None or not state.checksum:
            return "-"
        if state.checksum == obj.checksum:
            return "matches"
        return format_html('<strong style="color:#c62828">{}</strong>', "drifted")

    @admin.display(description="source")
    def source_code(self, obj):
        return format_html('<pre style="white-space:pre-wrap;max-width:100ch">{}</pre>', obj.source)

    @admin.display(description="audit history")
    def history(self, obj):
        rows = AuditEntry.objects.filter(change_id=obj.change_id).order_by("-id")[:50]
        lines = [f"#{e.pk}  {e.created_at:%Y-%m-%d %H:%M:%S}  {e.event:<28} {e.state or '':<30} {e.actor}  {e.reason}" for e in rows]
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', "\n".join(lines) or "no entries")


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "kind", "status", "source", "actor", "environment", "created_at", "finished_at", "change_id")
    list_filter = ("status", "kind", "source", "environment")
    search_fields = ("=id", "actor", "change_id")
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = (
        "id", "kind", "status", "status_reason", "source", "environment", "actor", "started_by", "host", "pid",
        "change_id", "reason", "parameters", "pipeline_digest", "task_id", "fencing_token", "created_at",
        "started_at", "finished_at", "heartbeat_at", "cancel_requested_at", "cancel_requested_by",
        "progress_done", "progress_total", "current_change", "counts", "results",
    )  # fmt: skip
    readonly_fields = fields


@admin.register(TargetSystem)
class TargetSystemAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "owner_team", "retired_at")
    list_filter = ("kind",)
    search_fields = ("name", "owner_team")
    # Connection configuration comes from settings only: read-only here.
    readonly_fields = ("name", "kind", "description", "configuration", "created_at", "retired_at")
    fields = ("name", "kind", "description", "configuration", "owner_team", "created_at", "retired_at")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "key_prefix", "created_at", "created_by", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username")
    fields = ("user", "name", "expires_at")
    actions = ["revoke"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        token, key = token_create(user=obj.user, name=obj.name, created_by=request.user.get_username(), expires_at=obj.expires_at)
        obj.pk = token.pk
        obj._state.adding = False
        messages.warning(request, f"The token for {obj.user} is shown once; store it now: {key}")

    @admin.action(description="Revoke selected tokens", permissions=["add"])
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)
