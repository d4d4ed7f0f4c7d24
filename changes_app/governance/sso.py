"""Single sign-on (docs/sso.md): OpenID Connect through mozilla-django-oidc.

A person who signs in through the provider is (issuer, ``sub``): :class:`SsoIdentity` links the
subject to one user, created at the first login. The provider's groups map to the four roles
(``FLAMINGOCK_OIDC_ROLE_MAP``), re-applied at every login, so that a role removed at the provider is
removed here; somebody with no mapped role is refused. SSO grants roles only: never superuser
status, never a target's ``operate`` or ``approve``, which stay grants made here. Loaded only by
the settings that name its backend, never at start-up (see :mod:`.logins`).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from changes_app.governance.logins import DEACTIVATED, NO_ROLE, SSO_FAILED, claims_roles, login_refused, user_roles_apply
from changes_app.models import SsoIdentity


class SsoBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's code flow; users found by (issuer, sub), created from claims, their
    roles re-applied from the provider's groups at every login."""

    def get_or_create_user(self, access_token, id_token, payload):
        claims = {**payload, **self.get_userinfo(access_token, id_token, payload)}
        # The userinfo answer must be about the ID token's subject (OpenID Connect Core 5.3.2).
        if not payload.get("sub") or claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("the userinfo subject is not the ID token's")
        issuer = settings.FLAMINGOCK_OIDC_ISSUER
        roles = claims_roles(claims)
        with transaction.atomic():
            identity = SsoIdentity.objects.select_for_update().select_related("user").filter(issuer=issuer, subject=claims["sub"]).first()
            if identity is None:
                if not roles:
                    login_refused(self.request, NO_ROLE)
                    return None
                identity = SsoIdentity.objects.create(user=self._user_create(claims), issuer=issuer, subject=claims["sub"])
            user = identity.user
            self._user_update(user, claims)
            user_roles_apply(user=user, roles=roles)
            identity.last_login_at = timezone.now()
            identity.save(update_fields=["last_login_at"])
        if not roles:
            login_refused(self.request, NO_ROLE)
            return None
        if not user.is_active:
            # Deactivated here: the provider's word does not bring the account back.
            login_refused(self.request, DEACTIVATED)
            return None
        user.flamingock_login = {"method": "sso", "issuer": issuer, "roles": sorted(roles)}
        return user

    def _user_create(self, claims):
        User = get_user_model()
        username = str(claims.get(getattr(settings, "FLAMINGOCK_OIDC_USERNAME_CLAIM", "preferred_username")) or claims["sub"])[:150]
        if User.objects.filter(username=username).exists():
            # Never take over an account made here (a local administrator's, say) by its name.
            login_refused(self.request, SSO_FAILED)
            raise SuspiciousOperation(f"a user named {username!r} exists and is not linked to this SSO subject")
        user = User(username=username)
        user.set_unusable_password()
        user.save()
        return user

    def _user_update(self, user, claims) -> None:
        fields = {"email": claims.get("email") or "", "first_name": claims.get("given_name") or "", "last_name": claims.get("family_name") or ""}
        changed = [name for name, value in fields.items() if getattr(user, name) != value[:150]]
        for name in changed:
            setattr(user, name, fields[name][:150])
        if changed:
            user.save(update_fields=changed)
