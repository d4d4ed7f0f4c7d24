"""Who acts is proven, not declared (docs/semantics.md §9): a personal API token, or, in an unprotected
environment only, the local operator recorded by operating-system user and host."""

from __future__ import annotations

import getpass
import os
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit_app.services import HOSTNAME, Actor, audit_record
from changes_app.governance.permissions import environment_protected
from changes_app.models import ApiToken


class IdentityError(Exception):
    """No acceptable identity: the command refuses to act."""


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


class TokenLifetimeRefused(ValueError):
    """A token's expiry is in the past or beyond the maximum lifetime; nothing was created."""


def token_max_lifetime() -> timedelta:
    return timedelta(days=getattr(settings, "FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS", 90))


def token_expiry(expires_at=None, *, now=None):
    """The expiry a new token gets: the maximum lifetime when none is asked; refused beyond it."""
    now = now or timezone.now()
    latest = now + token_max_lifetime()
    if expires_at is None:
        return latest
    if expires_at <= now:
        raise TokenLifetimeRefused("a token's expiry must be in the future")
    if expires_at > latest:
        days = f"{token_max_lifetime().total_seconds() / 86400:g}"
        raise TokenLifetimeRefused(
            f"a token lives at most {days} days (FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS): choose an expiry before {latest:%Y-%m-%d %H:%M} UTC"
        )
    return expires_at


def token_create(*, user, name: str, created_by: str, expires_at=None, actor: Actor | None = None) -> tuple[ApiToken, str]:
    """Create a token, audited as a credential granted; the key is returned once, only its hash
    is stored, and only its prefix reaches the trail. Its expiry is bounded (:func:`token_expiry`)."""
    expires_at = token_expiry(expires_at)
    if not user.is_active:
        raise TokenLifetimeRefused(f"{user.get_username()} is deactivated: a deactivated user gets no token")
    key = ApiToken.generate_key()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, key_hash=ApiToken.hash_key(key), key_prefix=key[:12], created_by=created_by, expires_at=expires_at
        )
        _token_audit("permission.granted", token, actor or Actor(name=created_by))
    return token, key


def token_revoke(*, tokens, actor: Actor, reason: str = "") -> list[ApiToken]:
    """Revoke the active tokens among ``tokens`` (a queryset), each audited as a credential revoked."""
    revoked = []
    with transaction.atomic():
        for token in tokens.select_for_update().filter(revoked_at__isnull=True).select_related("user"):
            token.revoked_at = timezone.now()
            token.revoked_reason = reason
            token.save(update_fields=["revoked_at", "revoked_reason"])
            _token_audit("permission.revoked", token, actor, reason=reason)
            revoked.append(token)
    return revoked


def _token_audit(event: str, token: ApiToken, actor: Actor, *, reason: str = "") -> None:
    audit_record(
        event=event,
        actor=actor,
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        reason=reason,
        details={
            "credential": "api_token",
            "token_id": token.pk,
            "token_prefix": token.key_prefix,
            "user": token.user.get_username(),
            "name": token.name,
        },
    )


#: How stale a token's ``last_used_at`` may be: writing it on every API request would make each read
#: a write transaction (a commit, a WAL flush); once a minute tells an operator as much.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_user(key: str):
    """The active user of a valid, unrevoked, unexpired token, or ``None``.

    The key is looked up by its SHA-256 hash (the key itself is never compared), in the request, so
    a revocation or an expiry holds from the next request on."""
    if not key:
        return None
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=ApiToken.hash_key(key), revoked_at__isnull=True, user__is_active=True)
        # A row without expiry (written around token_create) lives the maximum from its creation.
        .filter(Q(expires_at__gt=now) | Q(expires_at__isnull=True, created_at__gt=now - token_max_lifetime()))
        .first()
    )
    if token is None:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def cli_actor(*, token: str | None = None) -> Actor:
    """The CLI's actor: the token's user (with the OS user and host beside it), or the local operator."""
    token = token if token is not None else os.environ.get("FLAMINGOCK_TOKEN", "")
    if token:
        user = token_user(token)
        if user is None:
            raise IdentityError("FLAMINGOCK_TOKEN is not a valid, active token")
        return Actor(name=user.get_username(), user_id=user.pk, via="cli", os_user=os_user())
    if environment_protected():
        raise IdentityError("this environment is protected: set FLAMINGOCK_TOKEN to a personal API token")
    return Actor(name=f"{os_user()}@{HOSTNAME}", via="cli", os_user=os_user())


def user_actor(user, *, via: str) -> Actor:
    return Actor(name=user.get_username(), user_id=user.pk, via=via)


def service_actor(name: str = "scheduler") -> Actor:
    return Actor(name=f"service:{name}", via="schedule")
