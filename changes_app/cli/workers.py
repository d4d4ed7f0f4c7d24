"""``workers``: the workers of this environment, their code, and whether it is the current pipeline."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from changes_app.cli.output import EXIT_OK, Output, table
from changes_app.governance.identity import cli_actor
from changes_app.services.workers import workers_report


def workers(out: Output, options) -> int:
    actor = cli_actor()
    user = get_user_model().objects.get(pk=actor.user_id) if actor.user_id is not None else None
    report = workers_report(user=user)
    current = report["current"]
    lines = [
        f"current pipeline of {report['environment']}: "
        + (
            f"{current['digest'][:12]} (recorded by {current['recorded_by']} on {current['host']} at {current['recorded_at']})"
            if current
            else "none recorded"
        )
    ]
    rows = [
        [
            worker["name"],
            worker["host"],
            worker["pid"],
            worker["digest"][:12],
            worker["version"] or "-",
            worker["heartbeat_at"],
            "live" if worker["live"] else ("stopped" if worker["stopped_at"] else "silent"),
            worker["code"],
        ]
        for worker in report["workers"]
    ]
    lines.append(table(rows, ["NAME", "HOST", "PID", "DIGEST", "VERSION", "LAST HEARTBEAT", "STATE", "CODE"]) if rows else "no worker has reported")
    out.emit(report, "\n".join(lines))
    return EXIT_OK
