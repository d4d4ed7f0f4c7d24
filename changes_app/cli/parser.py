"""The command line's arguments: every subcommand with its options, and the parsing of values."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.core.management.base import CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from changes_app.cli.output import EXIT_USAGE, Exit

#: The single-change actions that take a change and a reason, with their help (``fix`` has its own).
ACTION_HELP = {
    "undo": "roll back an applied change and every later applied change of its stage",
    "skip": "decide that a change must not run here",
    "reapply": "release an undone or skipped change so the next run applies it",
    "accept-checksum": "re-baseline an applied change whose source was edited",
}


def break_glass_arguments(p) -> None:
    """Break-glass on an action (docs/break-glass.md): needs the ``break_glass`` permission."""
    p.add_argument(
        "--break-glass", action="store_true", help="incident: act now without prior approval; the use is audited and reviewed by two others"
    )
    p.add_argument("--incident", default="", help="with --break-glass: the incident reference (e.g. INC-4711)")


def add_arguments(parser: CommandParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def command(name: str, help_text: str, *, json_flag: bool = True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    plan_parser = command("plan", "each change: stage, order, id, target, latest state, next action, reason")
    plan_parser.add_argument(
        "--sql", action="store_true", help="also render each pending Django migration's SQL and RunPython code (reads its database)"
    )
    run = command("run", "run the pipeline now, in this process, under the lock")
    run.add_argument("--dry-run", action="store_true", help="show what would run, change nothing")
    run.add_argument("--async", dest="run_async", action="store_true", help="queue the run on a Celery worker and print its id")
    run.add_argument("action", nargs="?", choices=["cancel"], help="'cancel RUN_ID' cancels a run")
    run.add_argument("run_id", nargs="?", help="the run to cancel")
    command("validate", "exit non-zero if anything is pending, blocked or drifted (a deploy gate)")
    drift_parser = command("drift", "run the drift checks now and print the open findings (exit 6 if any)")
    drift_parser.add_argument("--live", action="store_true", help="also probe every applied change's verify against its live target")
    issues = command("issues", "the changes needing a human, with the error and guidance")
    issues.add_argument("action", nargs="?", choices=["get"])
    issues.add_argument("change_id", nargs="?")
    fix = command("fix", "resolve a change in an uncertain state by hand")
    fix.add_argument("change_id")
    fix.add_argument("--resolution", required=True, choices=["applied", "rolled-back"])
    fix.add_argument("--reason", required=True)
    break_glass_arguments(fix)
    for name, help_text in ACTION_HELP.items():
        p = command(name, help_text)
        p.add_argument("change_id")
        p.add_argument("--reason", required=True)
        break_glass_arguments(p)
    requests = command("requests", "list requests (approvals of governed actions)")
    requests.add_argument("--mine", action="store_true", help="only the requests I made")
    requests.add_argument("--awaiting-me", action="store_true", help="only the pending requests I may decide")
    requests.add_argument("--limit", type=int, default=100)
    for name, help_text in (
        ("cancel", "cancel a request of yours that has not been executed"),
        ("approve", "approve a request; the last approval needed executes it"),
        ("reject", "reject a request"),
    ):
        p = command(name, help_text)
        p.add_argument("request_id")
        p.add_argument("--comment", default="")
    audit = command("audit", "the audit trail")
    audit.add_argument("action", choices=["list", "verify", "export", "verify-export", "verify-pack", "checkpoint", "quarantine", "reindex"])
    audit.add_argument("file", nargs="?", help="verify-export, verify-pack: the export or evidence pack file")
    audit.add_argument("--change", help="only this change")
    audit.add_argument("--history", action="store_true", help="every entry, not only the latest per change")
    audit.add_argument("--since", help="only entries at or after this date or ISO 8601 time")
    audit.add_argument("--until", help="export: only entries before this date or ISO 8601 time")
    audit.add_argument("--target", help="export: only this target system")
    audit.add_argument("--actor", help="export: only this actor")
    audit.add_argument("--event", action="append", default=[], help="export: only this event type (repeatable)")
    audit.add_argument("--format", dest="export_format", choices=["csv", "jsonl"], default="jsonl")
    audit.add_argument("--output", help="export: the file to write ('-' for standard output)")
    audit.add_argument("--from-checkpoint", action="store_true", help="verify: only what follows the last signed checkpoint")
    audit.add_argument("--public-key", help="verify-export: the auditor's copy of the signing public key (hex)")
    audit.add_argument("--offline", action="store_true", help="verify-export: do not compare with the live trail")
    audit.add_argument("--limit", type=int, default=200)
    audit.add_argument("--reason", help="quarantine: why the foreign rows are moved aside (recorded in the trail)")
    evidence = command("evidence", "make an evidence pack (zip) of a period: controls, changes, access, findings, the trail")
    evidence.add_argument("--from", dest="period_from", required=True, help="the period's first date or ISO 8601 time")
    evidence.add_argument("--to", dest="period_to", required=True, help="the period's end, exclusive")
    evidence.add_argument("--output", required=True, help="the zip file to write")
    evidence.add_argument("--target", action="append", default=[], help="only this target system (repeatable; default: all)")
    evidence.add_argument("--member", action="append", default=[], help="only this member of a target group (repeatable; default: all)")
    adopt = command("adopt", "adopt a database whose Django migrations were applied before governance")
    adopt.add_argument("framework", choices=["django"])
    adopt.add_argument("--database", default="default", help="the database alias (default: default)")
    adopt.add_argument("--reason", help="why: recorded with every adopted migration")
    adopt.add_argument("--status", action="store_true", help="show whether the database needs adopting and what it would record")
    command("workers", "the workers of this environment: host, pid, pipeline digest, last heartbeat, current or stale")
    fleet = command("fleet", "fleet runs on a target group: plan, run, status, retry failed members, cancel, resume")
    fleet.add_argument("action", choices=["plan", "run", "status", "retry", "cancel", "resume"])
    fleet.add_argument("fleet_run_id", nargs="?", type=run_id, help="status, retry, cancel, resume: the fleet run")
    fleet.add_argument("--target", help="plan, run: the target group")
    fleet.add_argument("--offset", type=int, default=0, help="plan: the first member of the page (default 0)")
    fleet.add_argument("--limit", type=int, default=50, help="plan: members in the page, 1 to 500 (default 50)")
    fleet.add_argument("--canary", type=int, default=1, help="run: members in the canary wave (default 1)")
    fleet.add_argument("--wave", dest="wave_size", type=int, default=10, help="run: members per later wave (default 10)")
    fleet.add_argument("--concurrency", type=int, default=4, help="run: members running at once, at most (default 4)")
    fleet.add_argument("--max-failures", type=int, default=1, help="run: failures that halt the run (default 1)")
    fleet.add_argument("--no-wait", action="store_true", help="run: print the fleet run's id and return")
    lock = command("lock", "show or force-release the pipeline lock")
    lock.add_argument("action", choices=["status", "release"])
    lock.add_argument("--reason")
    token = command("token", "personal API tokens (administrators)")
    token.add_argument("action", choices=["create", "revoke", "list"])
    token.add_argument("username", nargs="?")
    token.add_argument("--name", default="cli")
    token.add_argument("--id", type=int, help="the token to revoke")
    token.add_argument("--days", type=float, help="lifetime in days (default and most: FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS)")


def since(value: str) -> datetime:
    """A date or ISO 8601 time; a naive one is UTC."""
    parsed = parse_datetime(value)
    if parsed is None and parse_date(value) is not None:
        parsed = datetime.combine(parse_date(value), datetime.min.time())
    if parsed is None:
        raise Exit(EXIT_USAGE, f"--since: not a date or ISO 8601 time: {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_fixed_timezone(0))


def run_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Exit(EXIT_USAGE, f"not a run id: {value!r}") from None


def request_id(value: str) -> int:
    try:
        return int(value.lstrip("#"))
    except ValueError:
        raise Exit(EXIT_USAGE, f"not a request id: {value!r}") from None
