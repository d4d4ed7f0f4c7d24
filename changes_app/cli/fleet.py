"""``fleet run|status|retry|cancel|resume``: fleet runs on a target group (docs/fleet.md).

``fleet run`` starts the run on the Celery workers and waits for its end (``--no-wait``: prints its
id at once). Exit codes: 0 SUCCEEDED (or still running), 3 HALTED, 1 PARTIAL or CANCELLED."""

from __future__ import annotations

import time

from changes_app.cli.output import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, Exit, Output, table
from changes_app.fleets.services import fleet_advance, fleet_cancel, fleet_get, fleet_resume, fleet_retry, fleet_run_start
from changes_app.governance.identity import cli_actor
from changes_app.models import FleetRun, Run
from changes_app.services.representations import fleet_run_data

FLEET_EXIT = {
    FleetRun.Result.SUCCEEDED: EXIT_OK,
    FleetRun.Result.HALTED: EXIT_BLOCKED,
    FleetRun.Result.PARTIAL: EXIT_FAILED,
    FleetRun.Result.CANCELLED: EXIT_FAILED,
}
POLL_SECONDS = 1.0


def fleet(out: Output, options) -> int:
    actor = cli_actor()
    action = options["action"]
    if action == "run":
        if not options.get("target"):
            raise Exit(2, "fleet run needs --target GROUP")
        run = fleet_run_start(
            actor=actor,
            target=options["target"],
            source=Run.Source.CLI,
            canary=options["canary"],
            wave_size=options["wave_size"],
            concurrency=options["concurrency"],
            max_failures=options["max_failures"],
        )
        while not options.get("no_wait") and run.status != FleetRun.Status.FINISHED:
            time.sleep(POLL_SECONDS)
            run = fleet_advance(fleet_run_id=run.pk)
    else:
        if not options.get("fleet_run_id"):
            raise Exit(2, f"fleet {action} needs FLEET_RUN_ID")
        act = {"status": fleet_get, "retry": fleet_retry, "cancel": fleet_cancel, "resume": fleet_resume}[action]
        run = act(fleet_run_id=options["fleet_run_id"], actor=actor)
    data = fleet_run_data(run)
    counts = ", ".join(f"{status} {count}" for status, count in sorted(data["counts"].items()))
    text = [f"fleet run {data['id']} on {data['target']}: {data['result'] or data['status']} (wave {data['wave']}; {counts})"]
    if data["status_reason"]:
        text.append(data["status_reason"])
    failed = [[m["member"], m["wave"], m["status"], m["reason"][:80]] for m in data["members"] if m["status"] == "FAILED"]
    if failed:
        text.append(table(failed, ["MEMBER", "WAVE", "STATUS", "REASON"]))
    out.emit(data, "\n".join(text) + "\n")
    return FLEET_EXIT.get(run.result, EXIT_OK) if run.status == FleetRun.Status.FINISHED else EXIT_OK
