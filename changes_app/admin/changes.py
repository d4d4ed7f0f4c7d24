"""Changes in the admin: the catalogue with each change's state, next action and history.

Everything that acts goes through a service (``admin.views``); nothing here saves a governed row
or writes the ledger. Lists are filtered to what the user may see and every ``has_*_permission``
checks the object."""

from django.contrib import admin
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from audit_app.models import AuditEntry, ChangeState
from changes_app.admin import views
from changes_app.admin.common import ReadOnlyMixin, admin_view, state_badge
from changes_app.models import ChangeRecord, ChangeRequest, Run


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_filter = ("stage", "target", "kind", "transactional")
    search_fields = ("change_id", "author", "description")
    ordering = ("stage", "order")
    actions = None
    fields = (
        "change_id", "stage", "order", "author", "target", "kind", "template", "description", "path", "line",
        "checksum", "transactional", "recovery", "environments", "has_rollback", "has_verify",
        "first_seen_at", "synced_at", "removed_at", "source_code", "history", "requests", "results",
    )  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/changes_app/changerecord/change_list.html"
    change_form_template = "admin/changes_app/changerecord/change_form.html"

    def get_queryset(self, request):
        rows = super().get_queryset(request)
        seen = views.targets_seen(request.user, "changes_app.view_changerecord")
        return rows if seen is None else rows.filter(target__in=seen)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "may_run": views.operates_any(request.user)}
        return super().changelist_view(request, extra_context)

    def get_list_display(self, request):
        """The state, next action and checksum columns read one plan and one read of the states
        per page, kept in this request's columns (a ModelAdmin is shared by every thread)."""
        states = {row.change_id: row for row in ChangeState.objects.all()}
        plan = views.plan_or_none(request)
        items = {item.change.id: item for item in plan.items} if plan else {}

        @admin.display(description="state")
        def latest_state(obj):
            state = states.get(obj.change_id)
            return state_badge(state.state if state else "")

        @admin.display(description="next action")
        def next_action(obj):
            item = items.get(obj.change_id)
            if item is None:
                return "removed from code" if obj.removed_at else "-"
            return format_html('<span title="{}">{}</span>', item.reason, item.action.value)

        @admin.display(description="checksum")
        def checksum_status(obj):
            state = states.get(obj.change_id)
            if state is None or not state.checksum:
                return "-"
            if state.checksum == obj.checksum:
                return "matches"
            return format_html('<strong style="color:#c62828">{}</strong>', "drifted")

        return ("change_id", "stage", "order", "target", latest_state, next_action, checksum_status)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, object_id)
        actions = views.offered_actions(request.user, record, views.plan_or_none(request)) if record is not None else []
        extra_context = {**(extra_context or {}), "flk_actions": actions}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="source")
    def source_code(self, obj):
        return format_html('<pre style="white-space:pre-wrap;max-width:100ch">{}</pre>', obj.source)

    @admin.display(description="audit history")
    def history(self, obj):
        rows = AuditEntry.objects.filter(change_id=obj.change_id).order_by("-id")
        lines = [
            f"#{e.seq or e.pk}  {e.created_at:%Y-%m-%d %H:%M:%S}  {e.event:<28} {e.state or '':<30} {e.actor}  {e.reason}{'  ERROR: ' + e.error if e.error else ''}"
            for e in rows
        ]
        return format_html('<pre class="flk-history" style="white-space:pre-wrap">{}</pre>', "\n".join(lines) or "no entries")

    @admin.display(description="requests")
    def requests(self, obj):
        rows = ChangeRequest.objects.filter(change_id=obj.change_id).order_by("-id")[:50]
        lines = [
            format_html(
                '<li><a href="{}">#{} {}</a> {} by {}: {}</li>',
                reverse("admin:changes_app_changerequest_change", args=[r.pk]),
                r.pk,
                r.get_kind_display(),
                r.status,
                r.requester_name,
                r.reason,
            )
            for r in rows
        ]
        return format_html("<ul>{}</ul>", mark_safe("".join(lines))) if lines else "none"

    @admin.display(description="results")
    def results(self, obj):
        lines = []
        for run in Run.objects.order_by("-created_at")[:200]:
            for row in run.results:
                if row.get("change_id") == obj.change_id:
                    lines.append(
                        format_html(
                            '<li><a href="{}">{}</a> {} {}: {} {}</li>',
                            reverse("admin:changes_app_run_change", args=[run.pk]),
                            f"{run.created_at:%Y-%m-%d %H:%M}",
                            run.get_kind_display(),
                            row.get("action", ""),
                            row.get("result", ""),
                            row.get("error") or row.get("reason", ""),
                        )
                    )
        return format_html("<ul>{}</ul>", mark_safe("".join(lines))) if lines else "none"

    def has_view_permission(self, request, obj=None):
        seen = views.targets_seen(request.user, "changes_app.view_changerecord")
        if seen is None:
            return True
        return bool(seen) if obj is None else obj.target in seen

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def get_urls(self):
        return [
            path("issues/", admin_view(self, views.issues_view), name="changes_app_changerecord_issues"),
            path("act/<str:kind>/<str:change_id>/", admin_view(self, views.change_action_view), name="changes_app_changerecord_act"),
            *super().get_urls(),
        ]
