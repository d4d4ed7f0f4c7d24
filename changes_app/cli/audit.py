"""``audit list|verify|export|verify-export|checkpoint|quarantine|reindex``: the trail, read, proven,
exported, when a foreign row has closed it quarantined, and its side index of subjects rebuilt."""

from __future__ import annotations

import json
import sys

from django.conf import settings
from django.contrib.auth import get_user_model

from audit_app.export import TRAILER_MARK, ExportFilters, audit_export, audit_export_verify
from audit_app.integrity import audit_verify, checkpoint_write, trail_quarantine, verdict_log, verdict_record
from audit_app.subjects import subjects_rebuild
from changes_app import services
from changes_app.cli import parser
from changes_app.cli.evidence import verify_pack_
from changes_app.cli.output import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE, Exit, Output, table
from changes_app.governance.identity import cli_actor
from changes_app.governance.permissions import PermissionRefused
from changes_app.services.representations import audit_entry_data


def reader(permission: str):
    """The actor of a reading subcommand: in a protected environment a token whose user holds
    ``permission``; elsewhere the local operator will do."""
    actor = cli_actor()
    if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).has_perm(permission):
        raise PermissionRefused(f"{actor.name} may not read the audit trail ({permission})")
    return actor


def audit(out: Output, options) -> int:
    return ACTIONS[options["action"]](out, options)


def listing(out: Output, options) -> int:
    entries = services.ledger_entries(
        change_id=options.get("change") or "",
        since=parser.since(options["since"]) if options.get("since") else None,
        history=options["history"],
        limit=options["limit"],
    )
    rows = [
        [
            e.id,
            e.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            e.event,
            e.change_id or "-",
            e.state or "-",
            e.actor,
            (e.reason or e.error.splitlines()[-1:] and e.error.splitlines()[-1] or "")[:60],
        ]
        for e in entries
    ]
    out.emit(
        lambda: [audit_entry_data(entry) for entry in entries],
        table(rows, ["#", "AT (UTC)", "EVENT", "CHANGE", "STATE", "ACTOR", "NOTE"]) if rows else "no entries",
    )
    return EXIT_OK


def verdict_text(report) -> str:
    if report.ok:
        return f"the chain is intact: {report.entries_checked} entries checked up to #{report.head_seq} in {report.duration_ms:.0f} ms"
    return f"BROKEN at entry #{report.problem.seq}: {report.problem.message}"


def verify(out: Output, options) -> int:
    actor = reader("audit_app.view_auditentry")
    report = audit_verify(from_checkpoint=options["from_checkpoint"])
    # The verdict first (output, log, exit code), then its record: it stands if the trail refuses it.
    verdict_log(report)
    out.emit(report.as_dict(), verdict_text(report))
    not_recorded = verdict_record(report, actor=actor)
    if not_recorded:
        out.note(f"\n{not_recorded}\n")
    return EXIT_OK if report.ok else EXIT_INTEGRITY


def quarantine(out: Output, options) -> int:
    if not (options.get("reason") or "").strip():
        raise Exit(EXIT_USAGE, "audit quarantine needs --reason TEXT")
    actor = cli_actor()
    if actor.user_id is not None and not get_user_model().objects.get(pk=actor.user_id).has_perm("audit_app.add_quarantinedentry"):
        raise PermissionRefused(f"{actor.name} may not quarantine rows of the audit trail (audit_app.add_quarantinedentry)")
    moved = trail_quarantine(actor=actor, reason=options["reason"].strip(), environment=settings.FLAMINGOCK_ENVIRONMENT)
    if not moved.rows:
        out.emit(moved.as_dict(), f"nothing to quarantine: every row of the trail is the writer's (head at #{moved.head_seq})")
        return EXIT_OK
    moved.report = audit_verify()
    verdict_log(moved.report)
    lines = [f"moved aside {len(moved.moved)} row(s) the writer did not write (recorded as audit.quarantined, entry id {moved.entry_id}):"]
    lines += [
        f"  id {row['id']} #{row['seq']} {row['event']} by {row['actor']}: entry_hash {row['entry_hash']}, row digest {row['row_digest']}"
        for row in moved.moved
    ]
    lines.append(f"the trail is writable again from #{moved.head_seq}; {verdict_text(moved.report)}")
    out.emit(moved.as_dict(), "\n".join(lines))
    not_recorded = verdict_record(moved.report, actor=actor)
    if not_recorded:
        out.note(f"\n{not_recorded}\n")
    return EXIT_OK if moved.report.ok else EXIT_INTEGRITY


def checkpoint(out: Output, options) -> int:
    written = checkpoint_write(reason="cli", force=True)
    if written is None:
        out.emit({"checkpoint": None}, "the trail is empty: nothing to sign")
        return EXIT_OK
    data = {"id": written.pk, "seq": written.seq, "entry_hash": written.entry_hash, "public_key": written.public_key, "key_id": written.key_id}
    out.emit(
        data,
        f"checkpoint {written.pk}: entry #{written.seq} {written.entry_hash} signed by key {written.key_id}\npublic key: {written.public_key}",
    )
    return EXIT_OK


def export(out: Output, options) -> int:
    if not options.get("output"):
        raise Exit(EXIT_USAGE, "audit export needs --output FILE (or '-' for standard output)")
    reader("audit_app.view_auditentry")
    filters = ExportFilters(
        since=parser.since(options["since"]) if options.get("since") else None,
        until=parser.since(options["until"]) if options.get("until") else None,
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
    out.note(f"exported {rows} entries to {options['output']} ({options['export_format']}), ending with the signed chain head")
    return EXIT_OK


def verify_export(out: Output, options) -> int:
    if not options.get("file"):
        raise Exit(EXIT_USAGE, "usage: flamingock audit verify-export FILE [--public-key HEX] [--offline]")
    try:
        check = audit_export_verify(options["file"], public_key=options.get("public_key"), against_trail=not options["offline"])
    except OSError as error:
        raise Exit(EXIT_USAGE, f"cannot read {options['file']}: {error.strerror or error}") from None
    out.emit(
        {"ok": check.ok, "rows": check.rows, "problems": check.problems},
        f"the export is intact: {check.rows} rows" if check.ok else "the export does NOT verify:\n" + "\n".join(f"  {p}" for p in check.problems),
    )
    return EXIT_OK if check.ok else EXIT_INTEGRITY


def reindex(out: Output, options) -> int:
    """Rebuild the side index that maps every entry to its target and change (audit_app.subjects):
    after a restore, or to apply a new rule to old entries. Writes nothing to the trail itself."""
    reader("audit_app.view_auditentry")
    indexed = subjects_rebuild()
    out.emit({"indexed": indexed}, f"the subject index is rebuilt: {indexed} entries indexed")
    return EXIT_OK


ACTIONS = {
    "list": listing,
    "verify": verify,
    "export": export,
    "verify-export": verify_export,
    "verify-pack": verify_pack_,
    "checkpoint": checkpoint,
    "quarantine": quarantine,
    "reindex": reindex,
}
