"""``adopt django``: record a database's Django migrations, applied before governance, as applied
outside governance (docs/django-migrations.md, "Adoption")."""

from __future__ import annotations

from changes_app import services
from changes_app.cli.output import EXIT_APPROVAL, EXIT_OK, Output, table
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from changes_app.services.representations import adoption_data, request_data


def adopt(out: Output, options) -> int:
    alias = options["database"]
    if options["status"]:
        status = services.django_adoption_status(alias=alias, actor=cli_actor())
        data = adoption_data(status)
        rows = [[row["change_id"], row["checksum"][:12]] for row in data["migrations"]]
        head = (
            f"database {alias}: adopted by {data['adopted_by']} at {data['adopted_at']}"
            if data["adopted"]
            else f"database {alias}: " + ("adoption required" if data["adoption_required"] else "no adoption needed")
        )
        out.emit(data, head + ("\n" + table(rows, ["MIGRATION", "CHECKSUM"]) if rows else ""))
        return EXIT_OK
    submission = services.django_adopt(alias=alias, actor=cli_actor(), reason=options["reason"] or "", source=Run.Source.CLI)
    if submission.run is not None:
        return out.run(submission.run, request=submission.request)
    # A policy governs the alias's target: the adoption is a request its approvers decide.
    request = submission.request
    migrations = request.rendered.get("adoption", {}).get("migrations", [])
    data = {**request_data(request), "awaiting_approval": True}
    text = (
        f"request #{request.pk}: adoption of database {alias} ({len(migrations)} migration(s)) awaits {request.required_approvals} approval(s) "
        f"on {request.target_system.name} in {request.environment} (expires {request.expires_at:%Y-%m-%d %H:%M} UTC)\n"
        f"an approver decides it with: python manage.py flamingock approve {request.pk}"
    )
    if migrations:
        text += "\n" + table([[row["change_id"], row["checksum"][:12]] for row in migrations], ["MIGRATION", "CHECKSUM"])
    out.emit(data, text)
    return EXIT_APPROVAL
