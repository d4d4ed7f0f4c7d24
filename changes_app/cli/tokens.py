"""``token create|revoke|list``: personal API tokens, managed by an administrator."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from changes_app.cli.output import EXIT_OK, EXIT_USAGE, Exit, Output, table
from changes_app.governance.identity import cli_actor, os_user, token_create, token_revoke
from changes_app.models import ApiToken


def token(out: Output, options) -> int:
    # Token administration needs the administrator's own proof of identity where it matters.
    actor = cli_actor()
    if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).is_superuser:
        raise Exit(EXIT_USAGE, "refused: only an administrator manages tokens")
    if options["action"] == "list":
        tokens = ApiToken.objects.select_related("user").order_by("id")
        rows = [
            [t.id, t.user.get_username(), t.name, t.key_prefix + "…", t.created_at, t.last_used_at or "-", "revoked" if t.revoked_at else "active"]
            for t in tokens
        ]
        out.emit(
            [{"id": t.id, "user": t.user.get_username(), "name": t.name, "prefix": t.key_prefix, "revoked": bool(t.revoked_at)} for t in tokens],
            table(rows, ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST USED", "STATUS"]) if rows else "no tokens",
        )
        return EXIT_OK
    if options["action"] == "create":
        user = get_user_model().objects.filter(username=options.get("username") or "").first()
        if user is None:
            raise Exit(EXIT_USAGE, f"no user {options.get('username')!r}")
        created, key = token_create(user=user, name=options["name"], created_by=actor.name or os_user(), actor=actor)
        out.emit(
            {"id": created.id, "user": user.get_username(), "token": key},
            f"token {created.id} for {user.get_username()} (shown once, store it now):\n{key}",
        )
        return EXIT_OK
    revoked = token_revoke(tokens=ApiToken.objects.filter(pk=options.get("id")), actor=actor)
    if not revoked:
        raise Exit(EXIT_USAGE, f"no active token {options.get('id')}")
    out.emit({"revoked": options["id"]}, f"token {options['id']} revoked")
    return EXIT_OK
