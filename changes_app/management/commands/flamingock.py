"""``python manage.py flamingock SUBCOMMAND``: the command line of DOMAIN §10.

Every subcommand parses its arguments, calls one service and prints the outcome, as a table or,
with ``--json``, as JSON. Exit codes: 0 success or nothing to do; 1 a change failed; 2 usage or
configuration error; 3 blocked; 4 awaiting approval; 5 lock not acquired; 6 integrity failure;
7 pending changes.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit_app.models import AuditEntry, ChangeState
from changes_app import approvals, collector, drift, services
from changes_app.discovery import pipeline_load
from changes_app.governance import PermissionRefused
from changes_app.guidance import issue_details
from changes_app.identity import IdentityError, cli_actor, os_user, token_create, token_revoke
from changes_app.models import ApiToken, ChangeRequest, Run
from changes_app.resolver import Action

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED, EXIT_APPROVAL, EXIT_LOCKED, EXIT_INTEGRITY, EXIT_PENDING = range(8)
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
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    return "\n".join([line.format(*headers), line.format(*("-" * width for width in widths))] + [line.format(*map(str, row)) for row in rows])


def _since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None and parse_date(value) is not None:
        parsed = datetime.combine(parse_date(value), datetime.min.time())
    if parsed is None:
        raise Exit(EXIT_USAGE, f"--since: not a date or ISO 8601 time: {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_fixed_timezone(0))


class Command(BaseCommand):
    help = "Plan, run, validate and govern change-as-code (see README)."

    # The command validates the pipeline itself and reports problems in its own format (with
    # --json too) and exit code 2; ``manage.py check`` still runs the system checks.
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        def command(name: str, help_text: str, *, json_flag: bool = True):
            p = sub.add_parser(name, help=help_text, description=help_text)
            if json_flag:
                p.add_argument("--json", action="store_true", help="print JSON")
            return p

        command("plan", "each change: stage, order, id, target, latest state, next action, reason")
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
        for name, help_text in (
            ("undo", "roll back an applied change and every later applied change of its stage"),
            ("skip", "decide that a change must not run here"),
            ("reapply", "release an undone or skipped change so the next run applies it"),
            ("accept-checksum", "re-baseline an applied change whose source was edited"),
        ):
            p = command(name, help_text)
            p.add_argument("change_id")
            p.add_argument("--reason", required=True)
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
        audit.add_argument("action", choices=["list", "verify", "export", "verify-export", "checkpoint"])
        audit.add_argument("file", nargs="?", help="verify-export: the export file")
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
        lock = command("lock", "show or force-release the pipeline lock")
        lock.add_argument("action", choices=["status", "release"])
        lock.add_argument("--reason")
        token = command("token", "personal API tokens (administrators)")
        token.add_argument("action", choices=["create", "revoke", "list"])
        token.add_argument("username", nargs="?")
        token.add_argument("--name", default="cli")
        token.add_argument("--id", type=int, help="the token to revoke")

    def handle(self, *args, **options):
        collector.keep_loaded()  # manage.py started the command line with the collector off
        self.as_json = options.get("json", False)
        handler = getattr(self, "do_" + options["subcommand"].replace("-", "_"))
        try:
            code = handler(options) or EXIT_OK
        except Exit as exit_:
            if str(exit_):
                self.stderr.write(str(exit_))
            code = exit_.code
        except services.PipelineInvalid as invalid:
            self.fail(EXIT_USAGE, str(invalid), problems=[problem.as_dict() for problem in invalid.problems])
            code = EXIT_USAGE
        except (IdentityError, PermissionRefused) as refused:
            self.fail(EXIT_USAGE, f"refused: {refused}")
            code = EXIT_USAGE
        except services.FlamingockError as error:
            self.fail(EXIT_USAGE, str(error))
            code = EXIT_USAGE
        sys.stdout.flush()
        if code:
            sys.exit(code)

    # -- output ------------------------------------------------------------------------------

    def emit(self, data, text: str) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str) if self.as_json else text)

    def fail(self, code: int, message: str, **extra) -> None:
        if self.as_json:
            self.stdout.write(json.dumps({"error": message, "exit_code": code, **extra}, indent=2, default=str))
        else:
            self.stderr.write(message)

    def emit_run(self, run: Run, notices: list[str] | None = None, request: ChangeRequest | None = None) -> int:
        data = {
            **({"request_id": request.pk} if request is not None else {}),
            "run_id": str(run.id),
            "kind": run.kind,
            "status": run.status,
            "reason": run.status_reason,
            "environment": run.environment,
            "actor": run.actor,
            "counts": run.counts,
            "results": run.results,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
        }
        rows = [
            [r["stage"], r["order"], r["change_id"], r["result"], r.get("duration_ms") or "", r.get("error") or r.get("reason", "")]
            for r in run.results
        ]
        text = f"run {run.id}: {run.status}" + (f" ({run.status_reason})" if run.status_reason else "")
        if rows:
            text = _table(rows, ["STAGE", "ORDER", "CHANGE", "RESULT", "MS", "DETAIL"]) + "\n" + text
        if notices is not None:
            data["notices"] = notices
            text += "".join(f"\nnote: {notice}" for notice in notices)
        self.emit(data, text)
        return RUN_EXIT.get(run.status, EXIT_FAILED)

    # -- subcommands ------------------------------------------------------------------------

    def do_plan(self, options) -> int:
        plan = services.pipeline_plan()
        rows = [[i.change.stage, i.change.order, i.change.id, i.change.target, i.latest_state or "-", i.action.value, i.reason] for i in plan.items]
        text = _table(rows, ["STAGE", "ORDER", "CHANGE", "TARGET", "STATE", "NEXT ACTION", "REASON"]) if rows else "no changes"
        for missing in plan.missing:
            text += f"\nmissing from code: {missing.change_id} ({missing.state} in stage {missing.stage})"
        text += "".join(f"\nnote: {notice}" for notice in plan.notices)
        self.emit(plan.as_dict(), text)
        return EXIT_OK

    def do_run(self, options) -> int:
        if options.get("action") == "cancel":
            if not options.get("run_id"):
                raise Exit(EXIT_USAGE, "usage: flamingock run cancel RUN_ID")
            run = services.run_cancel(run_id=self._uuid(options["run_id"]), actor=cli_actor())
            self.emit(
                {"run_id": str(run.id), "status": run.status, "cancel_requested_by": run.cancel_requested_by},
                f"run {run.id}: cancel requested ({run.status})",
            )
            return EXIT_OK
        if options["dry_run"]:
            return self.do_plan(options)
        if options["run_async"]:
            run = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
            self.emit({"run_id": str(run.id), "status": run.status, "task_id": run.task_id}, f"queued run {run.id}")
            return EXIT_OK
        return self.emit_run(services.run_start(actor=cli_actor(), source=Run.Source.CLI), notices=pipeline_load().notices)

    def _uuid(self, value: str):
        import uuid

        try:
            return uuid.UUID(value)
        except ValueError:
            raise Exit(EXIT_USAGE, f"not a run id: {value!r}") from None

    def do_validate(self, options) -> int:
        pipeline = pipeline_load()
        if not pipeline.valid:
            raise services.PipelineInvalid(pipeline)
        plan = services.pipeline_plan(pipeline=pipeline)
        drifted = [i.change.id for i in plan.items if i.recorded_checksum and i.recorded_checksum != i.change.checksum]
        missing = [row.change_id for row in plan.missing]
        blocked = [i.change.id for i in plan.items if i.action in (Action.MANUAL_INTERVENTION, Action.OUT_OF_ORDER, Action.BLOCKED)]
        awaiting = [i.change.id for i in plan.items if i.action == Action.AWAITING_APPROVAL]
        pending = [i.change.id for i in plan.items if i.action in (Action.APPLY, Action.RECONCILE)]
        # The cheap checks refresh the findings; live ones come from the last scheduled sweep.
        drift.drift_check(kind="scheduled")
        findings = [drift.finding_as_dict(f) for f in drift.findings_open()]
        if drifted or missing or findings:
            code = EXIT_INTEGRITY
        elif blocked:
            code = EXIT_BLOCKED
        elif awaiting:
            code = EXIT_APPROVAL
        elif pending:
            code = EXIT_PENDING
        else:
            code = EXIT_OK
        data = {
            "valid": code == EXIT_OK,
            "exit_code": code,
            "checksum_drift": drifted,
            "missing_from_code": missing,
            "blocked": blocked,
            "awaiting_approval": awaiting,
            "pending": pending,
            "findings": findings,
        }
        parts = [
            f"{label}: {', '.join(ids)}"
            for label, ids in (
                ("checksum drift", drifted),
                ("missing from code", missing),
                ("blocked", blocked),
                ("awaiting approval", awaiting),
                ("pending", pending),
            )
            if ids
        ]
        parts += [f"drift finding {f['id']} ({f['kind']}): {f['summary']}" for f in findings]
        self.emit(data, "\n".join(parts) or "valid: everything is applied and nothing drifted")
        return code

    def do_drift(self, options) -> int:
        report = drift.drift_check(kind="all" if options["live"] else "scheduled", actor=cli_actor())
        findings = list(drift.findings_open(include_acknowledged=True))
        rows = [[str(f.pk), f.kind, f.status, f.change_id or str(f.run_id or "") or f.lock_name, str(f.times_seen), f.summary] for f in findings]
        data = {**report.as_dict(), "findings": [drift.finding_as_dict(f) for f in findings]}
        self.emit(
            data, _table(rows, ["id", "kind", "status", "subject", "seen", "summary"]) if rows else f"no drift ({', '.join(report.checks).lower()})"
        )
        return EXIT_INTEGRITY if any(f.status == "OPEN" for f in findings) else EXIT_OK

    def do_issues(self, options) -> int:
        plan = services.pipeline_plan()
        if options.get("action") == "get":
            if not options.get("change_id"):
                raise Exit(EXIT_USAGE, "usage: flamingock issues get CHANGE_ID")
            item = plan.item(options["change_id"])
            if item is None:
                raise Exit(EXIT_USAGE, f"no change {options['change_id']!r} in the pipeline")
            if item.action not in (Action.MANUAL_INTERVENTION, Action.OUT_OF_ORDER):
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
            self.emit(details, "\n".join(text))
            return EXIT_OK
        found = [i for i in plan.items if i.action in (Action.MANUAL_INTERVENTION, Action.OUT_OF_ORDER)]
        rows = [[i.change.stage, i.change.id, i.change.target, i.latest_state or "-", i.reason] for i in found]
        self.emit(
            [issue_details(i) for i in found] if self.as_json else None,
            _table(rows, ["STAGE", "CHANGE", "TARGET", "STATE", "WHY"]) + "\n\nflamingock issues get CHANGE_ID shows what to do"
            if rows
            else "no issues",
        )
        return EXIT_OK

    # -- acting subcommands: request or perform -----------------------------------------------

    def submit(self, kind: str, options) -> int:
        """Perform the action where no approval is needed, else leave a request and exit 4."""
        submission = approvals.request_submit(
            kind=kind, change_id=options["change_id"], actor=cli_actor(), reason=options["reason"], source=Run.Source.CLI, inline=True
        )
        if submission.run is not None:
            return self.emit_run(submission.run, request=submission.request)
        request = submission.request
        data = {**approvals.request_as_dict(request), "awaiting_approval": request.status == ChangeRequest.Status.PENDING}
        if request.status == ChangeRequest.Status.PENDING:
            text = (
                f"request #{request.pk}: {request.get_kind_display()} of {request.change_id} awaits {request.required_approvals} approval(s) "
                f"on {request.target_system.name} in {request.environment} (expires {request.expires_at:%Y-%m-%d %H:%M} UTC)\n"
                f"an approver decides it with: python manage.py flamingock approve {request.pk}"
            )
            self.emit(data, text)
            return EXIT_APPROVAL
        self.emit(data, f"request #{request.pk}: {request.status}; the next run applies {request.change_id}")
        return EXIT_OK

    def do_fix(self, options) -> int:
        kind = ChangeRequest.Kind.MARK_APPLIED if options["resolution"] == "applied" else ChangeRequest.Kind.MARK_ROLLED_BACK
        return self.submit(kind, options)

    def do_undo(self, options) -> int:
        return self.submit(ChangeRequest.Kind.UNDO, options)

    def do_skip(self, options) -> int:
        return self.submit(ChangeRequest.Kind.SKIP, options)

    def do_reapply(self, options) -> int:
        return self.submit(ChangeRequest.Kind.REAPPLY, options)

    def do_accept_checksum(self, options) -> int:
        return self.submit(ChangeRequest.Kind.ACCEPT_CHECKSUM, options)

    # -- requests -------------------------------------------------------------------------------

    def _request_id(self, value: str) -> int:
        try:
            return int(value.lstrip("#"))
        except ValueError:
            raise Exit(EXIT_USAGE, f"not a request id: {value!r}") from None

    def emit_request(self, request: ChangeRequest, text: str) -> int:
        self.emit(approvals.request_as_dict(request), text)
        return EXIT_OK

    def do_requests(self, options) -> int:
        actor = cli_actor()
        found = approvals.requests_awaiting(actor=actor) if options["awaiting_me"] else approvals.requests_visible(actor=actor)
        if options["mine"]:
            found = (
                found.filter(requester_id=actor.user_id) if actor.user_id is not None else found.filter(requester_id=None, requester_name=actor.name)
            )
        found = list(found.prefetch_related("approvals")[: options["limit"]])
        rows = [
            [
                r.pk,
                r.kind,
                r.change_id,
                r.target_system.name,
                r.status,
                f"{sum(1 for a in r.approvals.all() if a.decision == 'APPROVE')}/{r.required_approvals}",
                r.requester_name,
                f"{r.expires_at:%Y-%m-%d %H:%M}",
                r.reason[:50],
            ]
            for r in found
        ]
        self.emit(
            [approvals.request_as_dict(r) for r in found],
            _table(rows, ["ID", "KIND", "CHANGE", "TARGET", "STATUS", "APPROVALS", "REQUESTER", "EXPIRES (UTC)", "REASON"])
            if rows
            else "no requests",
        )
        return EXIT_OK

    def do_cancel(self, options) -> int:
        request = approvals.request_cancel(request_id=self._request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"])
        return self.emit_request(request, f"request #{request.pk}: cancelled")

    def do_approve(self, options) -> int:
        request = approvals.request_approve(
            request_id=self._request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"], inline=True
        )
        if request.run is not None:
            return self.emit_run(request.run, request=request)
        if request.status == ChangeRequest.Status.APPROVED:
            return self.emit_request(request, f"request #{request.pk}: approved; the next run applies {request.change_id}")
        count = request.approvals.filter(decision="APPROVE").count()
        return self.emit_request(request, f"request #{request.pk}: approval recorded ({count} of {request.required_approvals})")

    def do_reject(self, options) -> int:
        request = approvals.request_reject(request_id=self._request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"])
        return self.emit_request(request, f"request #{request.pk}: rejected")

    def do_audit(self, options) -> int:
        action = options["action"]
        if action != "list":
            return getattr(self, "do_audit_" + action.replace("-", "_"))(options)
        return self.do_audit_list(options)

    def reader(self, permission: str):
        """The actor of a reading subcommand: in a protected environment a token whose user holds
        ``permission``; elsewhere the local operator will do."""
        actor = cli_actor()
        if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).has_perm(permission):
            raise PermissionRefused(f"{actor.name} may not read the audit trail ({permission})")
        return actor

    def do_audit_verify(self, options) -> int:
        from audit_app.integrity import audit_verify, verification_record

        report = audit_verify(from_checkpoint=options["from_checkpoint"])
        verification_record(report, actor=self.reader("audit_app.view_auditentry"))
        data = report.as_dict()
        text = (
            f"the chain is intact: {report.entries_checked} entries checked up to #{report.head_seq} in {report.duration_ms:.0f} ms"
            if report.ok
            else f"BROKEN at entry #{report.problem.seq}: {report.problem.message}"
        )
        self.emit(data, text)
        return EXIT_OK if report.ok else EXIT_INTEGRITY

    def do_audit_checkpoint(self, options) -> int:
        from audit_app.integrity import checkpoint_write

        checkpoint = checkpoint_write(reason="cli", force=True)
        if checkpoint is None:
            self.emit({"checkpoint": None}, "the trail is empty: nothing to sign")
            return EXIT_OK
        data = {
            "id": checkpoint.pk,
            "seq": checkpoint.seq,
            "entry_hash": checkpoint.entry_hash,
            "public_key": checkpoint.public_key,
            "key_id": checkpoint.key_id,
        }
        self.emit(
            data,
            f"checkpoint {checkpoint.pk}: entry #{checkpoint.seq} {checkpoint.entry_hash} signed by key {checkpoint.key_id}\npublic key: {checkpoint.public_key}",
        )
        return EXIT_OK

    def do_audit_export(self, options) -> int:
        from audit_app.export import TRAILER_MARK, ExportFilters, audit_export

        if not options.get("output"):
            raise Exit(EXIT_USAGE, "audit export needs --output FILE (or '-' for standard output)")
        self.reader("audit_app.view_auditentry")
        filters = ExportFilters(
            since=_since(options["since"]) if options.get("since") else None,
            until=_since(options["until"]) if options.get("until") else None,
            change_id=options.get("change") or "",
            target=options.get("target") or "",
            actor=options.get("actor") or "",
            events=options.get("event") or [],
        )
        lines = audit_export(fmt=options["export_format"], filters=filters)
        if options["output"] == "-":
            for line in lines:
                sys.stdout.write(line)
            return EXIT_OK
        with open(options["output"], "w", encoding="utf-8", newline="") as handle:
            for piece in lines:
                handle.write(piece)
        rows = json.loads(piece[len(TRAILER_MARK) :])["count"]  # the last piece is the trailer line
        self.stderr.write(f"exported {rows} entries to {options['output']} ({options['export_format']}), ending with the signed chain head")
        return EXIT_OK

    def do_audit_verify_export(self, options) -> int:
        from audit_app.export import audit_export_verify

        if not options.get("file"):
            raise Exit(EXIT_USAGE, "usage: flamingock audit verify-export FILE [--public-key HEX] [--offline]")
        try:
            check = audit_export_verify(options["file"], public_key=options.get("public_key"), against_trail=not options["offline"])
        except OSError as error:
            raise Exit(EXIT_USAGE, f"cannot read {options['file']}: {error.strerror or error}")
        self.emit(
            {"ok": check.ok, "rows": check.rows, "problems": check.problems},
            f"the export is intact: {check.rows} rows" if check.ok else "the export does NOT verify:\n" + "\n".join(f"  {p}" for p in check.problems),
        )
        return EXIT_OK if check.ok else EXIT_INTEGRITY

    def do_audit_list(self, options) -> int:
        fields = [
            "id",
            "created_at",
            "event",
            "change_id",
            "stage",
            "target",
            "state",
            "actor",
            "host",
            "run_id",
            "fencing_token",
            "checksum",
            "reason",
            "error",
        ]
        if options["history"] or not options.get("change") and options.get("since"):
            entries = AuditEntry.objects.order_by("id")
            if options.get("change"):
                entries = entries.filter(change_id=options["change"])
            if options.get("since"):
                entries = entries.filter(created_at__gte=_since(options["since"]))
            rows = list(entries.values(*fields)[: options["limit"]]) if options["limit"] else list(entries.values(*fields))
        else:
            states = ChangeState.objects.order_by("stage", "order")
            if options.get("change"):
                states = states.filter(change_id=options["change"])
            entry_ids = list(states.values_list("entry_id", flat=True))
            entries = AuditEntry.objects.filter(pk__in=entry_ids)
            if options.get("since"):
                entries = entries.filter(created_at__gte=_since(options["since"]))
            by_id = {row["id"]: row for row in entries.values(*fields)}
            rows = [by_id[pk] for pk in entry_ids if pk in by_id]
        table = [
            [
                r["id"],
                r["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                r["event"],
                r["change_id"] or "-",
                r["state"] or "-",
                r["actor"],
                (r["reason"] or r["error"].splitlines()[-1:] and r["error"].splitlines()[-1] or "")[:60],
            ]
            for r in rows
        ]
        self.emit(rows, _table(table, ["#", "AT (UTC)", "EVENT", "CHANGE", "STATE", "ACTOR", "NOTE"]) if table else "no entries")
        return EXIT_OK

    def do_lock(self, options) -> int:
        if options["action"] == "status":
            holder = services.lock_status()
            self.emit(
                {"held": holder is not None, "holder": holder.as_dict() if holder else None},
                "the lock is free"
                if holder is None
                else f"held by {holder.holder} (run {holder.run_id}) on {holder.host} pid {holder.pid} since {holder.since}, "
                f"{'EXPIRED at' if holder.expired else 'until'} {holder.expires_at}, fencing token {holder.token}",
            )
            return EXIT_OK
        if not options.get("reason"):
            raise Exit(EXIT_USAGE, "lock release needs --reason")
        holder = services.lock_force_release(actor=cli_actor(), reason=options["reason"])
        self.emit({"released": holder.as_dict()}, f"released the lock held by {holder.holder} (run {holder.run_id})")
        return EXIT_OK

    def do_token(self, options) -> int:
        # Token administration needs the administrator's own proof of identity where it matters.
        actor = cli_actor()
        if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).is_superuser:
            raise Exit(EXIT_USAGE, "refused: only an administrator manages tokens")
        if options["action"] == "list":
            tokens = ApiToken.objects.select_related("user").order_by("id")
            rows = [
                [
                    t.id,
                    t.user.get_username(),
                    t.name,
                    t.key_prefix + "…",
                    t.created_at,
                    t.last_used_at or "-",
                    "revoked" if t.revoked_at else "active",
                ]
                for t in tokens
            ]
            self.emit(
                [{"id": t.id, "user": t.user.get_username(), "name": t.name, "prefix": t.key_prefix, "revoked": bool(t.revoked_at)} for t in tokens],
                _table(rows, ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST USED", "STATUS"]) if rows else "no tokens",
            )
            return EXIT_OK
        if options["action"] == "create":
            user = get_user_model().objects.filter(username=options.get("username") or "").first()
            if user is None:
                raise Exit(EXIT_USAGE, f"no user {options.get('username')!r}")
            token, key = token_create(user=user, name=options["name"], created_by=actor.name or os_user(), actor=actor)
            self.emit(
                {"id": token.id, "user": user.get_username(), "token": key},
                f"token {token.id} for {user.get_username()} (shown once, store it now):\n{key}",
            )
            return EXIT_OK
        revoked = token_revoke(tokens=ApiToken.objects.filter(pk=options.get("id")), actor=actor)
        if not revoked:
            raise Exit(EXIT_USAGE, f"no active token {options.get('id')}")
        self.emit({"revoked": options["id"]}, f"token {options['id']} revoked")
        return EXIT_OK
