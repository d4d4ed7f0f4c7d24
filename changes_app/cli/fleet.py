"""``fleet plan|run|status|retry|cancel|resume``: fleet runs on a target group (docs/fleet.md).

``fleet plan --target GROUP`` prints what a fleet run would do: per change, how many members are at
each next action, and a page of members (``--offset``, ``--limit``); the API's
``/api/v1/fleets/plan/GROUP/``. It never touches a member.

``fleet run`` starts the run on the Celery workers and waits for its end (``--no-wait``: prints its
id at once). Exit codes: 0 SUCCEEDED (or still running), 3 HALTED, 1 PARTIAL or CANCELLED."""

from __future__ import annotations

import time

from changes_app.cli.output import EXIT_APPROVAL, EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, Exit, Output, table
from changes_app.fleets.services import fleet_advance, fleet_cancel, fleet_get, fleet_plan, fleet_resume, fleet_retry, fleet_run_start
from changes_app.governance.identity import cli_actor
from changes_app.governance.visibility import actor_change_targets_seen
from changes_app.models import FleetMemberRun, FleetRun, Run
from changes_app.services.representations import fleet_run_data

FLEET_EXIT = {
    FleetRun.Result.SUCCEEDED: EXIT_OK,
    FleetRun.Result.HALTED: EXIT_BLOCKED,
    FleetRun.Result.PARTIAL: EXIT_FAILED,
    FleetRun.Result.CANCELLED: EXIT_FAILED,
}
POLL_SECONDS = 1.0
#: Failed members the text lists at most.
FAILED_SHOWN = 50


def fleet_plan_show(out: Output, options, actor) -> int:
    target = options.get("target")
    if not target:
        raise Exit(2, "fleet plan needs --target GROUP")
    if options["offset"] < 0 or not 1 <= options["limit"] <= 500:
        raise Exit(2, "fleet plan: --offset is 0 or more, --limit 1 to 500")
    seen = actor_change_targets_seen(actor)
    if seen is not None and target not in seen:
        raise Exit(2, f"no target group {target!r}")
    data = fleet_plan(target=target, offset=options["offset"], limit=options["limit"])
    rows = [[change["id"], ", ".join(f"{action} {n}" for action, n in sorted(change["actions"].items())) or "-"] for change in data["changes"]]
    text = [f"fleet plan of {data['target']}: {data['members']} member(s), {len(data['changes'])} change(s)"]
    if rows:
        text.append(table(rows, ["CHANGE", "MEMBERS PER NEXT ACTION"]))
    page = data["page"]
    if page["members"]:
        shown = f"members {page['offset'] + 1} to {page['offset'] + len(page['members'])} of {data['members']}"
        text.append(shown + ":")
        text.append(
            table(
                [[m["member"], ", ".join(f"{c} {s}" for c, s in sorted(m["states"].items())) or "nothing applied"] for m in page["members"]],
                ["MEMBER", "STATES"],
            )
        )
    out.emit(data, "\n".join(text) + "\n")
    return EXIT_OK


def fleet(out: Output, options) -> int:
    actor = cli_actor()
    action = options["action"]
    if action == "plan":
        return fleet_plan_show(out, options, actor)
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
        # A run awaiting approval after its canary returns too: an approver decides it, not the wait.
        while not options.get("no_wait") and run.status == FleetRun.Status.RUNNING:
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
    # The failed members from the database, not from the page of members the JSON lists.
    failed_members = run.members.filter(status=FleetMemberRun.Status.FAILED).order_by("wave", "member")[:FAILED_SHOWN]
    failed = [[m.member, m.wave, m.status, m.reason[:80]] for m in failed_members]
    more = data["counts"].get(FleetMemberRun.Status.FAILED, 0) - len(failed)
    if more > 0:
        failed.append(["...", "", "", f"{more} more (API: ?status=failed&offset={FAILED_SHOWN})"])
    if failed:
        text.append(table(failed, ["MEMBER", "WAVE", "STATUS", "REASON"]))
    pending = [request for request in data["requests"] if request["status"] == "PENDING"]
    for request in pending:
        text.append(
            f"request #{request['id']} ({request['kind']}) awaits {request['required_approvals']} approval(s): "
            f"python manage.py flamingock approve {request['id']}"
        )
    out.emit(data, "\n".join(text) + "\n")
    if run.status == FleetRun.Status.AWAITING_APPROVAL or (action == "retry" and pending):
        return EXIT_APPROVAL
    return FLEET_EXIT.get(run.result, EXIT_OK) if run.status == FleetRun.Status.FINISHED else EXIT_OK
