"""``lock status|release``: who holds the pipeline lock, and releasing a stale one."""

from __future__ import annotations

from changes_app import services
from changes_app.cli.output import EXIT_OK, EXIT_USAGE, Exit, Output
from changes_app.governance.identity import cli_actor
from changes_app.services.representations import lock_holder_data


def lock(out: Output, options) -> int:
    if options["action"] == "status":
        holder = services.lock_status()
        out.emit(
            {"held": holder is not None, "holder": lock_holder_data(holder) if holder else None},
            "the lock is free"
            if holder is None
            else f"held by {holder.holder} (run {holder.run_id}) on {holder.host} pid {holder.pid} since {holder.since}, "
            f"{'EXPIRED at' if holder.expired else 'until'} {holder.expires_at}, fencing token {holder.token}",
        )
        return EXIT_OK
    if not options.get("reason"):
        raise Exit(EXIT_USAGE, "lock release needs --reason")
    holder = services.lock_force_release(actor=cli_actor(), reason=options["reason"])
    out.emit({"released": lock_holder_data(holder)}, f"released the lock held by {holder.holder} (run {holder.run_id})")
    return EXIT_OK
