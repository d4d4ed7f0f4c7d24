"""The ledger as the command line lists it: the latest entry of each change, or the history."""

from __future__ import annotations

from datetime import datetime

from audit_app.models import AuditEntry, ChangeState


def ledger_entries(*, change_id: str = "", since: datetime | None = None, history: bool = False, limit: int | None = 200) -> list[AuditEntry]:
    """With ``history`` (or ``since`` without a change) every entry in order, at most ``limit``
    (``0`` or ``None``: all); otherwise the latest entry of each change in pipeline order."""
    if history or (not change_id and since is not None):
        entries = AuditEntry.objects.order_by("id")
        if change_id:
            entries = entries.filter(change_id=change_id)
        if since is not None:
            entries = entries.filter(created_at__gte=since)
        return list(entries[:limit]) if limit else list(entries)
    states = ChangeState.objects.order_by("stage", "order")
    if change_id:
        states = states.filter(change_id=change_id)
    entry_ids = list(states.values_list("entry_id", flat=True))
    entries = AuditEntry.objects.filter(pk__in=entry_ids)
    if since is not None:
        entries = entries.filter(created_at__gte=since)
    by_id = {entry.pk: entry for entry in entries}
    return [by_id[pk] for pk in entry_ids if pk in by_id]
