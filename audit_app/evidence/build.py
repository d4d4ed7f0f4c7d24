"""Make an evidence pack from the trail: the period found, its lines streamed into the pack writer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from django.utils import timezone

from audit_app.chain import timestamp_text
from audit_app.evidence.pack import PackResult, pack_write
from audit_app.evidence.summary import summary_pdf
from audit_app.evidence.trail import audit_text, context_lines, feed_lines, period_find
from audit_app.signing import signing_key


def pack_build(
    *,
    path: Path,
    since: datetime,
    until: datetime,
    environment: str,
    targets: list[str],
    members: list[str],
    protected_environments: list[str],
    drift_ack_hours: float,
    review_hours: float,
    requested_by: str,
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Write the pack of ``[since, until)`` for the scope at ``path``; ``progress(done, total)`` is
    told how many of the period's entries were written."""
    if until <= since:
        raise ValueError("the period's end must be after its start")
    now = timezone.now()
    period = period_find(since=since, until=until)
    parameters = {
        "from": timestamp_text(since),
        "to": timestamp_text(until),
        "end": timestamp_text(min(until, now)),
        "environment": environment,
        "targets": sorted(targets),
        "members": sorted(members),
        "protected_environments": sorted(protected_environments),
        "drift_ack_hours": drift_ack_hours,
        "review_hours": review_hours,
    }
    scope = {
        "environment": environment,
        "targets": sorted(targets),
        "members": sorted(members),
        "from": parameters["from"],
        "to": parameters["to"],
        "generated_at": timestamp_text(now),
        "requested_by": requested_by,
        "audit_seq_first": period.first_seq,
        "audit_seq_last": period.last_seq,
    }
    total = period.entries
    context = context_lines(period)
    return pack_write(
        path,
        parameters=parameters,
        scope=scope,
        entries=total,
        text=audit_text(period, context, since=since, until=until),
        feed=feed_lines(period, environment, context),
        key=signing_key(),
        render_summary=summary_pdf,
        progress=(lambda done: progress(done, total)) if progress is not None else None,
    )
