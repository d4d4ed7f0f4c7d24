"""A finding as the API, the command line, webhooks and reports show it."""

from __future__ import annotations

from typing import Any

from changes_app.models import Finding


def finding_as_dict(finding: Finding) -> dict[str, Any]:
    return {
        "id": finding.pk,
        "check": finding.check_name,
        "kind": finding.kind,
        "status": finding.status,
        "environment": finding.environment,
        "change_id": finding.change_id or None,
        "target": finding.target or None,
        "run_id": str(finding.run_id) if finding.run_id else None,
        "lock": finding.lock_name or None,
        "member": finding.member or None,
        "summary": finding.summary,
        "first_seen": finding.first_seen.isoformat(),
        "last_seen": finding.last_seen.isoformat(),
        "times_seen": finding.times_seen,
        "evidence": finding.last_evidence,
        "status_by": finding.status_by,
        "status_reason": finding.status_reason,
        "fingerprint": finding.fingerprint,
    }
