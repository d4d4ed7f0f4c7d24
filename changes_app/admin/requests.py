"""Requests and approvals in the admin."""

from django.contrib import admin
from django.urls import path, reverse
from django.utils.html import format_html

from changes_app import services
from changes_app.admin import labels, views
from changes_app.admin.common import STATUS_COLOURS, ReadOnlyMixin, admin_view, badge
from changes_app.governance.visibility import change_targets_seen, run_shown
from changes_app.models import ChangeRequest


class AwaitingMeFilter(admin.SimpleListFilter):
    title = "decision"
    parameter_name = "awaiting"

    def lookups(self, request, model_admin):
        return [("me", "Awaiting my decision")]

    def queryset(self, request, queryset):
        if self.value() == "me":
            return queryset.filter(pk__in=services.requests_awaiting(actor=views.actor_of(request)).values("pk"))
        return queryset


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "kind", "change_id", "target_system", "status_badge", "requester_name", "approvals_given", "created_at", "expires_at")
    list_filter = (AwaitingMeFilter, "status", "kind", "environment")
    search_fields = ("=id", "change_id", "requester_name")
    actions = None
    fields = (
        "id", "kind", "change_id", "environment", "target_system", "status", "status_reason", "reason", "requester_name", "source",
        "checksum", "recorded_checksum", "required_approvals", "created_at", "decided_at", "expires_at", "executed_at", "run_link",
    )  # fmt: skip
    readonly_fields = fields
    change_form_template = "admin/changes_app/changerequest/change_form.html"

    def get_queryset(self, request):
        return services.requests_visible(actor=views.actor_of(request)).prefetch_related("approvals")

    def get_object(self, request, object_id, from_field=None):
        """The request with its run as this user may see it (``visibility.run_shown``). Never saved."""
        obj = super().get_object(request, object_id, from_field)
        if obj is not None and obj.run_id:
            obj.run = run_shown(obj.run, change_targets_seen(request.user))
        return obj

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        extra = {}
        if obj is not None:
            pending = obj.status == ChangeRequest.Status.PENDING
            review = services.request_review(request=obj, actor=views.actor_of(request))
            extra = {
                "review": review,
                "cascade_rows": [(step, labels.label("state", step.state)) for step in review.cascade],
                "subtitle": f"#{obj.pk} {labels.label('request_kind', obj.kind)} of {obj.change_id}",
                "kind_label": labels.label("request_kind", obj.kind),
                "status_label": labels.label("request_status", obj.status),
                "approvals_count": sum(1 for d in review.decisions if d.decision == "APPROVE"),
                "decisions": review.decisions,
                "comments": list(obj.comments.all()),
                "run_results": views.run_page(request.user, obj.run)["flk_results"] if obj.run_id else [],
                "may_decide": pending and review.may_decide and self.may_decide(request, obj),
                "may_cancel": obj.status in (ChangeRequest.Status.PENDING, ChangeRequest.Status.APPROVED)
                and obj.run_id is None
                and self.may_cancel(request, obj),
                "may_comment": self.may_comment(request, obj),
                "is_requester": obj.requester_id == request.user.pk,
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(labels.label("request_status", obj.status), STATUS_COLOURS.get(obj.status, "#757575"))

    @admin.display(description="approvals")
    def approvals_given(self, obj):
        given = sum(1 for a in obj.approvals.all() if a.decision == "APPROVE")
        return f"{given} of {obj.required_approvals}"

    @admin.display(description="run")
    def run_link(self, obj):
        if not obj.run_id:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:changes_app_run_change", args=[obj.run_id]), obj.run_id)

    def has_view_permission(self, request, obj=None):
        if obj is not None:
            return services.requests_visible(actor=views.actor_of(request)).filter(pk=obj.pk).exists()
        return request.user.has_perm("changes_app.view_changerequest") or views.targets_seen(request.user, "changes_app.view_changerequest") != set()

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def may_decide(self, request, obj) -> bool:
        """Shown to approvers of the target system; the service refuses self-approval (superusers too)."""
        return views.may_approve(request.user, obj.target_system.name)

    def may_cancel(self, request, obj) -> bool:
        return obj.requester_id is not None and obj.requester_id == request.user.pk

    def may_comment(self, request, obj) -> bool:
        target = obj.target_system.name
        return self.may_cancel(request, obj) or views.may_operate(request.user, target) or views.may_approve(request.user, target)

    def get_urls(self):
        return [
            path("<str:object_id>/decide/", admin_view(self, views.request_decide_view), name="changes_app_changerequest_decide"),
            *super().get_urls(),
        ]
