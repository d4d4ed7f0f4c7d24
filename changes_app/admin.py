"""Changes, runs, requests, target systems and tokens in the admin.

Everything that acts goes through a service (see admin_views); nothing here saves a governed row or
writes the ledger. Every list is filtered to what the user may see and every ``has_*_permission``
checks the object (DOMAIN §6: a global permission covers every target system, an object
permission those target systems).
"""

from functools import partial

from django.contrib import admin, messages
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from guardian.admin import GuardedModelAdminMixin

from audit_app.models import AuditEntry, ChangeState

from . import admin_views as views
from . import approvals
from .identity import token_create, token_revoke, user_actor
from .models import ApiToken, ApprovalPolicy, ChangeRecord, ChangeRequest, Run, TargetSystem

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
STATUS_COLOURS = {
    "SUCCEEDED": "#2e7d32",
    "NO_CHANGES": "#2e7d32",
    "EXECUTED": "#2e7d32",
    "APPROVED": "#2e7d32",
    "RUNNING": "#1565c0",
    "QUEUED": "#1565c0",
    "PENDING": "#1565c0",
    "FAILED": "#c62828",
    "ABORTED": "#c62828",
    "REJECTED": "#c62828",
    "BLOCKED": "#ef6c00",
    "AWAITING_APPROVAL": "#ef6c00",
    "LOCKED": "#ef6c00",
}


def badge(text: str, colour: str):
    return format_html(
        '<span class="flk-badge" style="background:{};color:#fff;padding:1px 6px;border-radius:8px;font-size:11px">{}</span>', colour, text
    )


def state_badge(state: str):
    if not state:
        return format_html('<span style="color:#757575">{}</span>', "not applied")
    return badge(state, STATE_COLOURS.get(state, "#424242"))


class ReadOnlyMixin:
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _wrap(model_admin, view):
    return model_admin.admin_site.admin_view(partial(view, model_admin))


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("change_id", "stage", "order", "target", "latest_state", "next_action", "checksum_status")
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
        # One plan and one read of the states per page, not one per row.
        self._states = {row.change_id: row for row in ChangeState.objects.all()}
        plan = views.plan_or_none(request)
        self._plan = {item.change.id: item for item in plan.items} if plan else {}
        extra_context = {**(extra_context or {}), "may_run": views.operates_any(request.user)}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, object_id)
        actions = []
        if record is not None:
            plan = views.plan_or_none(request)
            self._plan = {item.change.id: item for item in plan.items} if plan else {}
            actions = views.offered_actions(request.user, record, plan)
        extra_context = {**(extra_context or {}), "flk_actions": actions}
        return super().change_view(request, object_id, form_url, extra_context)

    def _state(self, obj):
        states = getattr(self, "_states", None)
        if states is None:
            return ChangeState.objects.filter(change_id=obj.change_id).first()
        return states.get(obj.change_id)

    @admin.display(description="state")
    def latest_state(self, obj):
        state = self._state(obj)
        return state_badge(state.state if state else "")

    @admin.display(description="next action")
    def next_action(self, obj):
        item = getattr(self, "_plan", {}).get(obj.change_id)
        if item is None:
            return "removed from code" if obj.removed_at else "-"
        return format_html('<span title="{}">{}</span>', item.reason, item.action.value)

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
            path("issues/", _wrap(self, views.issues_view), name="changes_app_changerecord_issues"),
            path("act/<str:kind>/<str:change_id>/", _wrap(self, views.change_action_view), name="changes_app_changerecord_act"),
            *super().get_urls(),
        ]


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
        extra_context = {**(extra_context or {}), "may_run": views.operates_any(request.user), "lock_holder": views.services.lock_status()}
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
            path("run/", _wrap(self, views.run_pipeline_view), name="changes_app_run_start"),
            path("lock/", _wrap(self, views.lock_view), name="changes_app_run_lock"),
            path("<str:object_id>/progress/", _wrap(self, views.run_progress_view), name="changes_app_run_progress"),
            path("<str:object_id>/cancel/", _wrap(self, views.run_cancel_view), name="changes_app_run_cancel"),
            *super().get_urls(),
        ]


class AwaitingMeFilter(admin.SimpleListFilter):
    title = "decision"
    parameter_name = "awaiting"

    def lookups(self, request, model_admin):
        return [("me", "Awaiting my decision")]

    def queryset(self, request, queryset):
        if self.value() == "me":
            return queryset.filter(pk__in=approvals.requests_awaiting(actor=views.actor_of(request)).values("pk"))
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
        return approvals.requests_visible(actor=views.actor_of(request)).prefetch_related("approvals")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        extra = {}
        if obj is not None:
            pending = obj.status == ChangeRequest.Status.PENDING
            extra = {
                "decisions": list(obj.approvals.all()),
                "comments": list(obj.comments.all()),
                "may_decide": pending and self.may_decide(request, obj),
                "may_cancel": obj.status in (ChangeRequest.Status.PENDING, ChangeRequest.Status.APPROVED)
                and obj.run_id is None
                and self.may_cancel(request, obj),
                "may_comment": self.may_comment(request, obj),
                "is_requester": obj.requester_id == request.user.pk,
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status, STATUS_COLOURS.get(obj.status, "#757575"))

    @admin.display(description="approvals")
    def approvals_given(self, obj):
        given = sum(1 for a in obj.approvals.all() if a.decision == "APPROVE")
        return f"{given}/{obj.required_approvals}"

    @admin.display(description="run")
    def run_link(self, obj):
        if not obj.run_id:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:changes_app_run_change", args=[obj.run_id]), obj.run_id)

    def has_view_permission(self, request, obj=None):
        if obj is not None:
            return approvals.requests_visible(actor=views.actor_of(request)).filter(pk=obj.pk).exists()
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
        return [path("<str:object_id>/decide/", _wrap(self, views.request_decide_view), name="changes_app_changerequest_decide"), *super().get_urls()]


@admin.register(TargetSystem)
class TargetSystemAdmin(GuardedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "kind", "owner_team", "policies", "retired_at")
    list_filter = ("kind",)
    search_fields = ("name", "owner_team")
    actions = None
    # Connection configuration comes from settings only (secrets masked): read-only here.
    fields = ("name", "kind", "description", "configuration", "owner_team", "created_at", "retired_at")
    readonly_fields = fields
    change_form_template = "admin/changes_app/targetsystem/change_form.html"

    def get_queryset(self, request):
        rows = admin.ModelAdmin.get_queryset(self, request).prefetch_related("approval_policies")
        seen = views.targets_seen(request.user, "changes_app.view_targetsystem")
        return rows if seen is None else rows.filter(name__in=seen)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        target = self.get_object(request, object_id)
        extra = {
            "policies": list(ApprovalPolicy.objects.filter(target_system=target)) if target else [],
            "may_set_policy": request.user.has_perm("changes_app.change_approvalpolicy"),
            "may_manage_permissions": views.is_platform_admin(request.user),
            "environment": views.services._environment(),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "show_delete": False,
        }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.display(description="approval policies")
    def policies(self, obj):
        return ", ".join(f"{p.environment}: {p.required_approvals}" for p in obj.approval_policies.all()) or "-"

    def has_view_permission(self, request, obj=None):
        seen = views.targets_seen(request.user, "changes_app.view_targetsystem")
        if seen is None:
            return True
        return bool(seen) if obj is None else obj.name in seen

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Nothing on the row is edited here; guardian's object-permission screens ask for this
        # permission, and only their wrappers (platform admins) grant it.
        return getattr(request, "_flk_permission_screen", False)

    def has_delete_permission(self, request, obj=None):
        return False

    def _permission_screen(self, view):
        def screen(request, *args, **kwargs):
            if not views.is_platform_admin(request.user):
                from django.core.exceptions import PermissionDenied

                raise PermissionDenied
            request._flk_permission_screen = True
            return view(request, *args, **kwargs)

        return screen

    def obj_perms_manage_view(self, request, object_pk):
        return self._permission_screen(super().obj_perms_manage_view)(request, object_pk)

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        return self._permission_screen(super().obj_perms_manage_user_view)(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        return self._permission_screen(super().obj_perms_manage_group_view)(request, object_pk, group_id)

    def get_urls(self):
        return [path("<str:object_id>/policy/", _wrap(self, views.policy_view), name="changes_app_targetsystem_policy"), *super().get_urls()]


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
        token, key = token_create(
            user=obj.user, name=obj.name, created_by=request.user.get_username(), expires_at=obj.expires_at, actor=user_actor(request.user, via="ui")
        )
        obj.pk = token.pk
        obj._state.adding = False
        messages.warning(request, f"The token for {obj.user} is shown once; store it now: {key}")

    @admin.action(description="Revoke selected tokens", permissions=["add"])
    def revoke(self, request, queryset):
        revoked = token_revoke(tokens=queryset, actor=user_actor(request.user, via="ui"))
        self.message_user(request, f"{len(revoked)} token(s) revoked.", messages.SUCCESS)


# The admin index is the dashboard: what needs attention, for the user who looks.
_admin_index = admin.site.index


def _dashboard_index(request, extra_context=None):
    return _admin_index(request, {**views.dashboard_context(request), **(extra_context or {})})


admin.site.index = _dashboard_index
from . import admin_drift  # noqa: E402, F401  (findings and webhook deliveries)
