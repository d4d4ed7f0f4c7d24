"""``fix``, ``undo``, ``skip``, ``reapply`` and ``accept-checksum``: one change, one governed action,
performed where no approval is needed, else left as a request (exit 4)."""

from __future__ import annotations

from changes_app import services
from changes_app.cli.output import EXIT_APPROVAL, EXIT_OK, EXIT_USAGE, Exit, Output
from changes_app.engine.actions import ACTIONS, FIX_KINDS
from changes_app.governance.identity import cli_actor
from changes_app.models import ChangeRequest, Run
from changes_app.services.representations import request_data

#: Each subcommand's request kind, read from the action table: a kind with its own run is named
#: after itself, except the fixes, whose ``--resolution`` picks the kind.
SUBCOMMAND_KINDS = {
    action.kind.lower().replace("_", "-"): action.kind
    for action in ACTIONS.values()
    if action.run_kind not in (None, Run.Kind.FIX) and action.subject == "change"  # ADOPT: ``adopt django``
}


def kind_of(subcommand: str, options) -> str:
    return FIX_KINDS[options["resolution"]] if subcommand == "fix" else SUBCOMMAND_KINDS[subcommand]


def submit(out: Output, options) -> int:
    """Perform the action where no approval is needed, else leave a request and exit 4; with
    ``--break-glass`` the use approves it and it is performed now (docs/break-glass.md)."""
    emergency = None
    if options.get("break_glass"):
        emergency = services.break_glass_of(reason=options["reason"], incident=options.get("incident"))
    elif options.get("incident"):
        raise Exit(EXIT_USAGE, "--incident goes with --break-glass")
    submission = services.request_submit(
        kind=kind_of(options["subcommand"], options),
        change_id=options["change_id"],
        actor=cli_actor(),
        reason=options["reason"],
        source=Run.Source.CLI,
        inline=True,
        break_glass=emergency,
    )
    if submission.run is not None:
        return out.run(submission.run, request=submission.request)
    request = submission.request
    data = {**request_data(request), "awaiting_approval": request.status == ChangeRequest.Status.PENDING}
    if request.status == ChangeRequest.Status.PENDING:
        text = (
            f"request #{request.pk}: {request.get_kind_display()} of {request.change_id} awaits {request.required_approvals} approval(s) "
            f"on {request.target_system.name} in {request.environment} (expires {request.expires_at:%Y-%m-%d %H:%M} UTC)\n"
            f"an approver decides it with: python manage.py flamingock approve {request.pk}"
        )
        out.emit(data, text)
        return EXIT_APPROVAL
    out.emit(data, f"request #{request.pk}: {request.status}; the next run applies {request.change_id}")
    return EXIT_OK
