"""Personal API tokens in the admin: created (shown once) and revoked, never edited."""

from django.contrib import admin, messages

from changes_app.governance.identity import token_create, token_revoke, user_actor
from changes_app.models import ApiToken


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
