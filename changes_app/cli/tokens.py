"""``token create|revoke|list``: personal API tokens, managed by an administrator."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from changes_app.cli.output import EXIT_OK, EXIT_USAGE, Exit, Output, table
from changes_app.governance.identity import TokenLifetimeRefused, cli_actor, os_user, token_create, token_revoke
from changes_app.models import ApiToken


def _status(token: ApiToken, now) -> str:
    if token.revoked_at:
        return f"revoked ({token.revoked_reason})" if token.revoked_reason else "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active" if token.user.is_active else "user deactivated"


def token(out: Output, options) -> int:
    # Token administration needs the administrator's own proof of identity where it matters.
    actor = cli_actor()
    if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).is_superuser:
        raise Exit(EXIT_USAGE, "refused: only an administrator manages tokens")
    if options["action"] == "list":
        now = timezone.now()
        tokens = ApiToken.objects.select_related("user").order_by("id")
        rows = [
            [t.id, t.user.get_username(), t.name, t.key_prefix + "…", t.created_at, t.expires_at or "-", t.last_used_at or "-", _status(t, now)]
            for t in tokens
        ]
        out.emit(
            [
                {
                    "id": t.id,
                    "user": t.user.get_username(),
                    "name": t.name,
                    "prefix": t.key_prefix,
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                    "revoked": bool(t.revoked_at),
                    "status": _status(t, now),
                }
                for t in tokens
            ],
            table(rows, ["ID", "USER", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST USED", "STATUS"]) if rows else "no tokens",
        )
        return EXIT_OK
    if options["action"] == "create":
        user = get_user_model().objects.filter(username=options.get("username") or "").first()
        if user is None:
            raise Exit(EXIT_USAGE, f"no user {options.get('username')!r}")
        days = options.get("days")
        expires_at = timezone.now() + timedelta(days=days) if days is not None else None
        try:
            created, key = token_create(user=user, name=options["name"], created_by=actor.name or os_user(), expires_at=expires_at, actor=actor)
        except TokenLifetimeRefused as refused:
            raise Exit(EXIT_USAGE, f"refused: {refused}") from None
        out.emit(
            {"id": created.id, "user": user.get_username(), "token": key, "expires_at": created.expires_at.isoformat()},
            f"token {created.id} for {user.get_username()}, expires {created.expires_at:%Y-%m-%d %H:%M} UTC (shown once, store it now):\n{key}",
        )
        return EXIT_OK
    revoked = token_revoke(tokens=ApiToken.objects.filter(pk=options.get("id")), actor=actor)
    if not revoked:
        raise Exit(EXIT_USAGE, f"no active token {options.get('id')}")
    out.emit({"revoked": options["id"]}, f"token {options['id']} revoked")
    return EXIT_OK
