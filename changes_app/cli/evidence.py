"""``evidence --from DATE --to DATE --output FILE`` makes an evidence pack in this process;
``audit verify-pack FILE --public-key HEX --offline`` checks one with the public key alone.

The offline check is ``audit_app.evidence.offline``, which needs neither settings nor a database:
``python -m audit_app.evidence.offline FILE --public-key HEX`` runs it where Django is not set up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from audit_app.evidence.offline import EXIT_NOT_VERIFIED, EXIT_VERIFIED, usage_problem, verify_pack
from changes_app.cli import parser
from changes_app.cli.output import EXIT_OK, EXIT_USAGE, Exit, Output
from changes_app.governance.identity import cli_actor
from changes_app.models import EvidencePack
from changes_app.services.evidence import evidence_dir, evidence_generate, evidence_request
from changes_app.services.representations import evidence_pack_data


def evidence(out: Output, options) -> int:
    since, until = parser.since(options["period_from"]), parser.since(options["period_to"])
    output = Path(options["output"])
    if not output.parent.is_dir():
        raise Exit(EXIT_USAGE, f"--output: the directory {output.parent} does not exist")
    pack = evidence_request(actor=cli_actor(), since=since, until=until, targets=options.get("target"), members=options.get("member"), queue=False)
    pack = evidence_generate(pack_id=pack.pk)
    if pack.status != EvidencePack.Status.DONE:
        out.fail(EXIT_USAGE, f"the evidence pack could not be made: {pack.error}", pack=evidence_pack_data(pack))
        return EXIT_USAGE
    # A copy, not a link: the pack kept for the admin and the API stays apart from the one handed out.
    shutil.copyfile(evidence_dir() / pack.file_path, output)
    lines = [f"evidence pack written to {output}: {pack.total} entries, manifest SHA-256 {pack.manifest_sha256}"]
    lines += [f"  {result:<15} {control}" for control, result in pack.results.items()]
    out.emit(lambda: {**evidence_pack_data(pack), "output": str(output)}, "\n".join(lines))
    return EXIT_OK


def verify_pack_(out: Output, options) -> int:
    """The same check as the offline module; it reads no setting and no database."""
    file, key = options.get("file"), options.get("public_key") or ""
    if not file or not key:
        raise Exit(EXIT_USAGE, "usage: flamingock audit verify-pack FILE --public-key HEX --offline")
    problem = usage_problem(file, key)
    if problem:
        raise Exit(EXIT_USAGE, problem)
    verdict = verify_pack(file, public_key=key)
    results = {control["id"]: control["result"] for control in verdict.controls}
    text = (
        f"the pack is verified: {verdict.entries} entries of the period, linked to both signed checkpoints\n"
        + "\n".join(f"  {result:<15} {control}" for control, result in results.items())
        if verdict.ok
        else "the pack does NOT verify:\n" + "\n".join(f"  {p}" for p in verdict.problems)
    )
    out.emit({"ok": verdict.ok, "entries": verdict.entries, "problems": verdict.problems, "controls": results}, text)
    return EXIT_VERIFIED if verdict.ok else EXIT_NOT_VERIFIED
