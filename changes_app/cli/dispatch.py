"""Which function answers each subcommand, and how a refusal becomes an exit code."""

from __future__ import annotations

from django.utils.module_loading import import_string

from audit_app.types import TrailClosed
from changes_app import services
from changes_app.cli.output import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE, Exit, Output
from changes_app.cli.parser import ACTION_HELP
from changes_app.governance.identity import IdentityError
from changes_app.governance.permissions import PermissionRefused

#: The function that answers each subcommand, by dotted path: a command loads its own module only,
#: as Django loads a management command, so a ``plan`` in a deploy gate does not import the audit
#: export, its signing library or the token admin (30 to 45 ms of a 0.46 s start).
SUBCOMMANDS = {
    "plan": "changes_app.cli.pipeline.plan",
    "run": "changes_app.cli.pipeline.run",
    "validate": "changes_app.cli.pipeline.validate",
    "drift": "changes_app.cli.pipeline.drift_",
    "issues": "changes_app.cli.pipeline.issues",
    "fix": "changes_app.cli.actions.submit",
    **dict.fromkeys(ACTION_HELP, "changes_app.cli.actions.submit"),
    "requests": "changes_app.cli.requests.listing",
    "cancel": "changes_app.cli.requests.cancel",
    "approve": "changes_app.cli.requests.approve",
    "reject": "changes_app.cli.requests.reject",
    "audit": "changes_app.cli.audit.audit",
    "evidence": "changes_app.cli.evidence.evidence",
    "lock": "changes_app.cli.lock.lock",
    "token": "changes_app.cli.tokens.token",
    "workers": "changes_app.cli.workers.workers",
    "fleet": "changes_app.cli.fleet.fleet",
    "adopt": "changes_app.cli.adopt.adopt",
}


def dispatch(out: Output, options) -> int:
    """Answer one subcommand; its exit code (2 for a usage error or a refusal)."""
    try:
        return import_string(SUBCOMMANDS[options["subcommand"]])(out, options) or EXIT_OK
    except Exit as exit_:
        if str(exit_):
            out.note(str(exit_))
        return exit_.code
    except services.PipelineInvalid as invalid:
        out.fail(EXIT_USAGE, str(invalid), problems=[problem.as_dict() for problem in invalid.problems])
    except (IdentityError, PermissionRefused) as refused:
        out.fail(EXIT_USAGE, f"refused: {refused}")
    except TrailClosed as closed:
        # The trail refuses every write until the foreign rows are quarantined: an integrity failure.
        out.fail(EXIT_INTEGRITY, str(closed))
        return EXIT_INTEGRITY
    except services.FlamingockError as error:
        out.fail(EXIT_USAGE, str(error))
    return EXIT_USAGE
