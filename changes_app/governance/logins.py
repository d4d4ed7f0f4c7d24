"""Signing in (docs/sso.md): local passwords and the emergency login, the audit of every login and
failed login, the provider's groups as roles, the single sign-on views, and what a deactivation ends.

Cheap to import on purpose: every process loads it (``AppConfig.ready``, and Django loads the
password backend for each permission check), while the OpenID Connect client (:mod:`.sso`, which
imports requests and josepy, about a third of a second) loads only where single sign-on is on.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models.signals import post_save, pre_save
from django.http import Http404
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from audit_app.services import Actor, audit_record
from changes_app.governance.identity import token_revoke
from changes_app.governance.permission_audit import acting_actor, acting_as
from changes_app.governance.refusals import LOGIN, LOGIN_FAILED, refusal_record, refusals_counted
from changes_app.governance.roles import ROLES
from changes_app.models import ApiToken

LOCAL_ON = "on"
LOCAL_EMERGENCY_ONLY = "emergency-only"
LOCAL_OFF = "off"

#: Who grants and removes the roles the provider's groups map to.
SSO_ACTOR = Actor(name="service:sso", via="sso")

# Why a login failed, in ``auth.login_failed`` entries.
BAD_CREDENTIALS = "bad_credentials"
THROTTLED = "throttled"
LOCAL_LOGIN_DISABLED = "local_login_disabled"
NO_ROLE = "no_role"
SSO_FAILED = "sso_failed"
DEACTIVATED = "deactivated"


def sso_enabled() -> bool:
    return bool(getattr(settings, "FLAMINGOCK_OIDC_ENABLED", False))


def sso_context(request) -> dict:
    """Template context: whether the login page offers "Sign in with SSO"."""
    return {"flamingock_sso_enabled": sso_enabled()}


def local_login() -> str:
    return getattr(settings, "FLAMINGOCK_LOCAL_LOGIN", LOCAL_ON)


def client_address(request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client says (docs/sso.md, "Behind a proxy").
    return (request.META.get("REMOTE_ADDR", "") if request is not None else "") or "unknown"


def role_map() -> dict[str, str]:
    """Provider group -> role, checked: every value must be one of the four roles."""
    mapping = getattr(settings, "FLAMINGOCK_OIDC_ROLE_MAP", {}) or {}
    unknown = sorted({role for role in mapping.values() if role not in ROLES})
    if unknown:
        raise ImproperlyConfigured(f"FLAMINGOCK_OIDC_ROLE_MAP names no role {', '.join(map(repr, unknown))}: the roles are {', '.join(ROLES)}")
    return dict(mapping)


def claims_roles(claims: dict) -> set[str]:
    """The roles the provider's groups in ``claims`` map to."""
    groups = claims.get(getattr(settings, "FLAMINGOCK_OIDC_GROUPS_CLAIM", "groups")) or []
    if isinstance(groups, str):
        groups = [groups]
    mapping = role_map()
    return {mapping[group] for group in groups if isinstance(group, str) and group in mapping}


def user_roles_apply(*, user, roles: set[str]) -> None:
    """Make ``user``'s role groups exactly ``roles`` (other groups are left alone), audited as
    ``permission.granted``/``permission.revoked`` by ``service:sso``; staff status follows."""
    with acting_as(SSO_ACTOR):
        held = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        if held - roles:
            user.groups.remove(*Group.objects.filter(name__in=held - roles))
        if roles - held:
            user.groups.add(*Group.objects.filter(name__in=roles - held))
    if user.is_staff != bool(roles):
        user.is_staff = bool(roles)
        user.save(update_fields=["is_staff"])


def login_refused(request, why: str) -> None:
    """Say why the login of ``request`` fails, for its ``auth.login_failed`` entry."""
    if request is not None:
        request.flamingock_login_refusal = why


class LocalPasswordBackend(ModelBackend):
    """Passwords, as ``FLAMINGOCK_LOCAL_LOGIN`` allows, throttled per client address; and the model
    permissions of every user, however they signed in."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        limit = getattr(settings, "FLAMINGOCK_LOGIN_FAILURE_LIMIT", 10)
        # Without a request nobody signs in from anywhere (a script's authenticate()): no throttle.
        if request is not None and refusals_counted(who=client_address(request), reason=LOGIN) >= limit:
            login_refused(request, THROTTLED)
            raise PermissionDenied
        policy = local_login()
        emergency = policy == LOCAL_EMERGENCY_ONLY and username in getattr(settings, "FLAMINGOCK_EMERGENCY_USERS", [])
        if policy != LOCAL_ON and not emergency:
            # Refused before the password is checked: a disabled login answers nothing about it.
            login_refused(request, LOCAL_LOGIN_DISABLED)
            raise PermissionDenied
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            login_refused(request, BAD_CREDENTIALS)
            return None
        user.flamingock_login = {"method": "password", **({"emergency": True} if emergency else {})}
        return user


# -- the single sign-on views (their backend is .sso, loaded only where SSO is on) --------------------


class SsoLoginView(OIDCAuthenticationRequestView):
    """``oidc/authenticate/``: to the provider; not found while single sign-on is off."""

    def __init__(self, *args, **kwargs):
        if sso_enabled():
            super().__init__(*args, **kwargs)

    def get(self, request):
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        return super().get(request)


class SsoCallbackView(OIDCAuthenticationCallbackView):
    """``oidc/callback/``: back from the provider; not found while single sign-on is off."""

    def get(self, request):
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        if request.GET.get("error"):
            # The provider refused (the person declined consent, say): a failed login too.
            login_refused(request, SSO_FAILED)
            user_login_failed.send(sender=SsoCallbackView, credentials={"method": "sso"}, request=request)
        return super().get(request)


# -- receivers: the audit of logins, and what a deactivation ends ----------------------------------


def _logged_in(sender, request, user, **kwargs):
    # Only logins through a credential: Client.force_login and host-project backends set no method.
    login = getattr(user, "flamingock_login", None)
    if login is None:
        return
    audit_record(
        event="auth.login",
        actor=Actor(name=user.get_username(), user_id=user.pk, via="ui"),
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        details={**login, "address": client_address(request)},
    )


def _login_failed(sender, credentials, request=None, **kwargs):
    if request is None:
        # authenticate() called by code, not a sign-in through the admin (Client.login, a script).
        return
    # The OpenID Connect callback authenticates with a nonce and a PKCE verifier, never a password.
    method = "sso" if {"nonce", "code_verifier", "method"} & set(credentials) else "password"
    why = getattr(request, "flamingock_login_refusal", SSO_FAILED if method == "sso" else BAD_CREDENTIALS)
    # The name typed is recorded only when it is a user's: a password typed in its box is not.
    typed = str(credentials.get("username") or "")[:150]
    known = typed if typed and get_user_model().objects.filter(username=typed).exists() else ""
    refusal_record(
        reason=LOGIN,
        action="login",
        object="admin",
        address=client_address(request),
        event=LOGIN_FAILED,
        message=f"a {method} login failed: {why}",
        details={"method": method, "why": why, **({"user": known} if known else {})},
    )


def _user_saving(sender, instance, update_fields=None, **kwargs):
    instance._flamingock_was_active = None
    if instance.pk is not None and (update_fields is None or "is_active" in update_fields):
        instance._flamingock_was_active = sender._default_manager.filter(pk=instance.pk).values_list("is_active", flat=True).first()


def _user_saved(sender, instance, created, **kwargs):
    if getattr(instance, "_flamingock_was_active", None) and not instance.is_active:
        token_revoke(tokens=ApiToken.objects.filter(user=instance), actor=acting_actor(), reason="user deactivated")


def receivers_connect() -> None:
    """Connect the receivers (``AppConfig.ready``); connecting twice is harmless."""
    user_logged_in.connect(_logged_in, dispatch_uid="flamingock-auth-login")
    user_login_failed.connect(_login_failed, dispatch_uid="flamingock-auth-login-failed")
    User = get_user_model()
    pre_save.connect(_user_saving, sender=User, dispatch_uid="flamingock-user-deactivating")
    post_save.connect(_user_saved, sender=User, dispatch_uid="flamingock-user-deactivated")
