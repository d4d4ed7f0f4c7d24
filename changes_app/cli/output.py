"""How the command line answers: a table or text, or with ``--json`` JSON; and its exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from changes_app.governance.identity import cli_actor
from changes_app.governance.visibility import actor_change_targets_seen, run_shown
from changes_app.models import ChangeRequest, Run
from changes_app.services import ExitCode
from changes_app.services.representations import run_outcome_data

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED, EXIT_APPROVAL, EXIT_LOCKED, EXIT_INTEGRITY, EXIT_PENDING = (int(code) for code in ExitCode)
RUN_EXIT = {
    Run.Status.SUCCEEDED: EXIT_OK,
    Run.Status.NO_CHANGES: EXIT_OK,
    Run.Status.QUEUED: EXIT_OK,
    Run.Status.FAILED: EXIT_FAILED,
    Run.Status.ABORTED: EXIT_FAILED,
    Run.Status.BLOCKED: EXIT_BLOCKED,
    Run.Status.AWAITING_APPROVAL: EXIT_APPROVAL,
    Run.Status.LOCKED: EXIT_LOCKED,
}


class Exit(Exception):
    """Stop the subcommand with this exit code and, if any, this message on standard error."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code


def table(rows: list[list[Any]], headers: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    return "\n".join([line.format(*headers), line.format(*("-" * width for width in widths))] + [line.format(*map(str, row)) for row in rows])


class Output:
    """The command's standard output and error, and whether it answers in JSON."""

    def __init__(self, stdout, stderr, *, as_json: bool):
        self.stdout, self.stderr, self.as_json = stdout, stderr, as_json

    def emit(self, data: Any | Callable[[], Any], text: str) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text``; a callable ``data`` is built only
        for JSON, so that a table of thousands of changes serializes nothing."""
        if self.as_json:
            self.stdout.write(json.dumps(data() if callable(data) else data, indent=2, default=str))
        else:
            self.stdout.write(text)

    def fail(self, code: int, message: str, **extra) -> None:
        if self.as_json:
            self.stdout.write(json.dumps({"error": message, "exit_code": code, **extra}, indent=2, default=str))
        else:
            self.stderr.write(message)

    def note(self, message: str) -> None:
        self.stderr.write(message)

    def run(self, run: Run, notices: list[str] | None = None, request: ChangeRequest | None = None) -> int:
        """Print a run's outcome and the results of the changes the caller may see (the others are
        counted in ``hidden_results``, as the API does); its exit code."""
        run = run_shown(run, actor_change_targets_seen(cli_actor()))
        data = {**({"request_id": request.pk} if request is not None else {}), **run_outcome_data(run)}
        rows = [
            [r["stage"], r["order"], r["change_id"], r["result"], r.get("duration_ms") or "", r.get("error") or r.get("reason", "")]
            for r in run.results
        ]
        text = f"run {run.id}: {run.status}" + (f" ({run.status_reason})" if run.status_reason else "")
        if run.hidden_results:
            text += f"\n{run.hidden_results} more change(s) on target systems you cannot see"
        if rows:
            text = table(rows, ["STAGE", "ORDER", "CHANGE", "RESULT", "MS", "DETAIL"]) + "\n" + text
        if notices is not None:
            data["notices"] = notices
            text += "".join(f"\nnote: {notice}" for notice in notices)
        self.emit(data, text)
        return RUN_EXIT.get(run.status, EXIT_FAILED)
