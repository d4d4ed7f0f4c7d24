"""The audit trail in the admin: read-only at every step, no add, change or delete."""

from django.contrib import admin

from .models import AuditEntry, ChangeState


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "event", "change_id", "state", "actor", "environment", "run_id")
    list_filter = ("event", "state", "environment", "target", "stage")
    search_fields = ("=change_id", "=actor", "reason")
    date_hierarchy = "created_at"
    # Counting a million rows costs more than the page itself.
    show_full_result_count = False
    list_per_page = 50
    actions = None
    fields = (
        "id", "created_at", "event", "environment", "change_id", "stage", "order", "target", "state", "checksum",
        "transaction_strategy", "recovery_strategy", "run_id", "actor", "actor_user_id", "host", "pid",
        "fencing_token", "duration_ms", "reason", "error", "rollback_error", "details",
    )  # fmt: skip
    readonly_fields = fields


@admin.register(ChangeState)
class ChangeStateAdmin(ReadOnlyAdmin):
    list_display = ("change_id", "stage", "order", "target", "state", "updated_at", "applied_count")
    list_filter = ("state", "stage", "target")
    search_fields = ("=change_id",)
    actions = None
