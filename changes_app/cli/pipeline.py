"""``plan``, ``run``, ``validate``, ``drift`` and ``issues``: what the pipeline would do, doing it,
and what stands in a deploy's way."""

from __future__ import annotations

from changes_app import services
from changes_app.cli import parser
from changes_app.cli.output import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE, Exit, Output, table
from changes_app.drift import checks as drift
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.guidance import issue_details
from changes_app.services.representations import finding_data, issue_data, plan_list_data


def plan(out: Output, options) -> int:
    found = services.pipeline_plan()
    rows = [[i.change.stage, i.change.order, i.change.id, i.change.target, i.latest_state or "-", i.action.value, i.reason] for i in found.items]
    text = table(rows, ["STAGE", "ORDER", "CHANGE", "TARGET", "STATE", "NEXT ACTION", "REASON"]) if rows else "no changes"
    for missing in found.missing:
        text += f"\nmissing from code: {missing.change_id} ({missing.state} in stage {missing.stage})"
    text += "".join(f"\nnote: {notice}" for notice in found.notices)
    if options.get("sql"):
        # Only on request: rendering reads each Django migration's database (a plain plan never does).
        rendered = services.plan_render()
        text += "".join(f"\n\n-- {m['change_id']} on {m['alias']} ({m['vendor']})\n{m['sql'] or m['error']}" for m in rendered)
        out.emit(lambda: {**plan_list_data(found), "rendered": rendered}, text)
        return EXIT_OK
    out.emit(lambda: plan_list_data(found), text)
    return EXIT_OK


def run(out: Output, options) -> int:
    if options.get("action") == "cancel":
        if not options.get("run_id"):
            raise Exit(EXIT_USAGE, "usage: flamingock run cancel RUN_ID")
        cancelled = services.run_cancel(run_id=parser.run_id(options["run_id"]), actor=cli_actor())
        out.emit(
            {"run_id": str(cancelled.id), "status": cancelled.status, "cancel_requested_by": cancelled.cancel_requested_by},
            f"run {cancelled.id}: cancel requested ({cancelled.status})",
        )
        return EXIT_OK
    if options["dry_run"]:
        return plan(out, options)
    if options["run_async"]:
        warning = services.workers_warning()
        if warning:
            out.note(f"warning: {warning}")
        queued = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
        out.emit({"run_id": str(queued.id), "status": queued.status, "task_id": queued.task_id}, f"queued run {queued.id}")
        return EXIT_OK
    return out.run(services.run_start(actor=cli_actor(), source=Run.Source.CLI), notices=pipeline_load().notices)


def _findings_refreshed():
    # The cheap checks refresh the findings; live ones come from the last scheduled sweep.
    drift.drift_check(kind="scheduled")
    return drift.findings_open()


def validate(out: Output, options) -> int:
    verdict = services.pipeline_validate(findings=_findings_refreshed)
    parts = [
        f"{label}: {', '.join(ids)}"
        for label, ids in (
            ("checksum drift", verdict.checksum_drift),
            ("missing from code", verdict.missing_from_code),
            ("blocked", verdict.blocked),
            ("awaiting approval", verdict.awaiting_approval),
            ("pending", verdict.pending),
        )
        if ids
    ]
    parts += [f"drift finding {f.pk} ({f.kind}): {f.summary}" for f in verdict.findings]
    out.emit(verdict.as_dict, "\n".join(parts) or "valid: everything is applied and nothing drifted")
    return int(verdict.exit_code)


def drift_(out: Output, options) -> int:
    report = drift.drift_check(kind="all" if options["live"] else "scheduled", actor=cli_actor())
    findings = list(drift.findings_open(include_acknowledged=True))
    rows = [[str(f.pk), f.kind, f.status, f.change_id or str(f.run_id or "") or f.lock_name, str(f.times_seen), f.summary] for f in findings]
    out.emit(
        lambda: {
            "checks": report.checks,
            "findings": [finding_data(f) for f in findings],
            "opened": [f.pk for f in report.opened],
            "resolved": [f.pk for f in report.resolved],
        },
        table(rows, ["id", "kind", "status", "subject", "seen", "summary"]) if rows else f"no drift ({', '.join(report.checks).lower()})",
    )
    return EXIT_INTEGRITY if any(f.status == "OPEN" for f in findings) else EXIT_OK


def issues(out: Output, options) -> int:
    found = services.pipeline_plan()
    if options.get("action") == "get":
        if not options.get("change_id"):
            raise Exit(EXIT_USAGE, "usage: flamingock issues get CHANGE_ID")
        item = found.item(options["change_id"])
        if item is None:
            raise Exit(EXIT_USAGE, f"no change {options['change_id']!r} in the pipeline")
        if not item.needs_human:
            raise Exit(EXIT_USAGE, f"{item.change.id} is not an issue (next action: {item.action.value})")
        details = issue_details(item)
        text = [
            f"{details['id']} ({details['stage']}:{details['order']}, target {details['target']}, {details['strategy']})",
            f"state: {details['latest_state']}  next action: {details['next_action']}",
            f"why: {details['reason']}",
        ]
        if details["error"]:
            text += ["error:", details["error"].rstrip()]
        if details["rollback_error"]:
            text += ["rollback error:", details["rollback_error"].rstrip()]
        text += ["what to do:"] + [f"  {n}. {step}" for n, step in enumerate(details["guidance"], start=1)]
        out.emit(lambda: issue_data(details), "\n".join(text))
        return EXIT_OK
    stuck = found.issues
    rows = [[i.change.stage, i.change.id, i.change.target, i.latest_state or "-", i.unsettled or i.reason] for i in stuck]
    out.emit(
        lambda: [issue_data(issue_details(i)) for i in stuck],
        table(rows, ["STAGE", "CHANGE", "TARGET", "STATE", "WHY"]) + "\n\nflamingock issues get CHANGE_ID shows what to do" if rows else "no issues",
    )
    return EXIT_OK
