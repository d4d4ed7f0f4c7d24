"""Personal API tokens in the admin: created (shown once) and revoked, never edited."""

from django import forms
from django.contrib import admin, messages

from changes_app.governance.identity import TokenLifetimeRefused, token_create, token_expiry, token_revoke, user_actor
from changes_app.models import ApiToken


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name", "expires_at")

    def clean_expires_at(self):
        # The same bound as token_create, shown on the form rather than as an error page.
        expires_at = self.cleaned_data.get("expires_at")
        try:
            return token_expiry(expires_at)
        except TokenLifetimeRefused as refused:
            raise forms.ValidationError(str(refused)) from None

    def clean_user(self):
        user = self.cleaned_data.get("user")
        if user is not None and not user.is_active:
            raise forms.ValidationError(f"{user.get_username()} is deactivated: a deactivated user gets no token")
        return user


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ("name", "user", "key_prefix", "created_at", "created_by", "last_used_at", "expires_at", "revoked_at", "revoked_reason")
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
