"""Drift findings and their webhook deliveries in the admin.

Findings are written by the checks only; a person acknowledges or resolves them through an
action that asks for a reason and calls the service (audited). Deliveries are read-only.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from changes_app.admin.common import ReadOnlyMixin
from changes_app.drift.checks import finding_acknowledge, finding_resolve
from changes_app.errors import FlamingockError
from changes_app.governance.identity import user_actor
from changes_app.models import Finding, WebhookDelivery


class ReasonActionForm(ActionForm):
    reason = forms.CharField(required=False, label="Reason", widget=forms.TextInput(attrs={"size": 60}))


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    fields = ("url", "status", "attempts", "last_status_code", "last_error", "next_attempt_at", "delivered_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Finding)
class FindingAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("kind", "status", "change_id", "target", "summary", "times_seen", "first_seen", "last_seen")
    list_filter = ("status", "check_name", "kind", "environment")
    search_fields = ("change_id", "summary", "fingerprint")
    ordering = ("status", "-last_seen")
    action_form = ReasonActionForm
    actions = ["acknowledge", "resolve"]
    inlines = [DeliveryInline]
    readonly_fields = [field.name for field in Finding._meta.fields]

    def _act(self, request, queryset, service, done: str) -> None:
        actor = user_actor(request.user, via="ui")
        reason = request.POST.get("reason", "")
        count = 0
        for finding in queryset:
            try:
                service(finding_id=finding.pk, actor=actor, reason=reason)
                count += 1
            except FlamingockError as error:
                self.message_user(request, f"finding {finding.pk}: {error}", messages.ERROR)
        if count:
            self.message_user(request, f"{count} finding(s) {done}.", messages.SUCCESS)

    @admin.action(description="Acknowledge selected findings (reason required)", permissions=["acknowledge"])
    def acknowledge(self, request, queryset):
        self._act(request, queryset, finding_acknowledge, "acknowledged")

    @admin.action(description="Resolve selected findings (reason required)", permissions=["acknowledge"])
    def resolve(self, request, queryset):
        self._act(request, queryset, finding_resolve, "resolved")

    def has_acknowledge_permission(self, request):
        return request.user.has_perm("changes_app.acknowledge_finding")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("pk", "finding", "url", "status", "attempts", "last_status_code", "next_attempt_at", "delivered_at")
    list_filter = ("status",)
    readonly_fields = [field.name for field in WebhookDelivery._meta.fields]
