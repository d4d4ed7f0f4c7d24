"""Target systems in the admin: their policies and object permissions (platform admins)."""

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.urls import path
from django.utils.translation import gettext_lazy as _
from guardian.admin import AdminGroupObjectPermissionsForm, AdminUserObjectPermissionsForm, GuardedModelAdminMixin

from changes_app.admin import views
from changes_app.admin.common import admin_view
from changes_app.conf import current_environment
from changes_app.fleets.groups import group_names
from changes_app.models import ApprovalPolicy, TargetSystem

#: The two object permissions that govern a target system, first on guardian's screens, each with
#: what it lets its holder do.
GOVERNING_PERMISSIONS = {
    "operate_targetsystem": _(
        "Operate: run the pipeline and ask for apply, undo, fix, skip and re-apply of this target system's changes "
        "(performed directly where no policy governs them, otherwise as requests)."
    ),
    "approve_targetsystem": _("Approve: approve or reject requests on this target system's changes (never one's own)."),
    "break_glass": _(
        "Break-glass: in an incident, apply, undo or fix this target system's changes without prior approval; "
        "each use is audited and reviewed by two others (docs/break-glass.md). Held by no role by default."
    ),
}


class GoverningPermissionsFirst:
    """guardian's object-permission form with operate and approve first, each explained, and the
    generic add, change, delete and view permissions after them, as checkboxes in that order."""

    def get_obj_perms_field_label(self):
        return _("Permissions on this target system")

    def get_obj_perms_field_choices(self):
        choices = super().get_obj_perms_field_choices()
        codenames = {code for code, _name in choices}
        governing = [(code, label) for code, label in GOVERNING_PERMISSIONS.items() if code in codenames]
        generic = [(code, _("Generic: %(name)s") % {"name": name}) for code, name in choices if code not in GOVERNING_PERMISSIONS]
        return [(_("What this person or group may do with changes"), governing), (_("Generic model permissions (rarely needed)"), generic)]

    def get_obj_perms_field_widget(self):
        return forms.CheckboxSelectMultiple


class TargetUserPermissionsForm(GoverningPermissionsFirst, AdminUserObjectPermissionsForm):
    pass


class TargetGroupPermissionsForm(GoverningPermissionsFirst, AdminGroupObjectPermissionsForm):
    pass


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
            "environment": current_environment(),
            "policy_form": views.PolicyForm(),
            "is_group": bool(target) and target.name in group_names(),
            "adoption": views.adoption_pending(request, target),
            "adoption_form": views.ReasonForm(),
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
                raise PermissionDenied
            request._flk_permission_screen = True
            return view(request, *args, **kwargs)

        return screen

    def get_obj_perms_manage_user_form(self, request):
        return TargetUserPermissionsForm

    def get_obj_perms_manage_group_form(self, request):
        return TargetGroupPermissionsForm

    def obj_perms_manage_view(self, request, object_pk):
        return self._permission_screen(super().obj_perms_manage_view)(request, object_pk)

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        return self._permission_screen(super().obj_perms_manage_user_view)(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        return self._permission_screen(super().obj_perms_manage_group_view)(request, object_pk, group_id)

    def get_urls(self):
        return [
            path("<str:object_id>/policy/", admin_view(self, views.policy_view), name="changes_app_targetsystem_policy"),
            path("<str:object_id>/adopt/", admin_view(self, views.adoption_view), name="changes_app_targetsystem_adopt"),
            *super().get_urls(),
        ]
