"""What each audit entry is about (its target system and its change), kept in a side index of the trail
(:class:`~audit_app.models.EntrySubject`) so that the target and change filters also find the
governance and drift entries, which name their subject in their details.

The rule is one function, :func:`entry_subject`, read by the writer for every new entry and by
:func:`subjects_rebuild` for the entries already written (migration 0007, ``flamingock audit
reindex``). The trail stays the truth: the index can always be dropped and rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import connections, router, transaction

from audit_app.models import AuditEntry, EntrySubject

#: Entries read and indexed per transaction by a rebuild.
REBUILD_BATCH = 10_000


def entry_subject(*, target: str, change_id: str, details: Mapping | None) -> tuple[str, str]:
    """The target system and the change an entry is about: its own columns when it has them, else what
    its details name. The details contract, for any writer: ``target`` (or ``target_system``) names a
    target system and ``change_id`` a change; an object permission names its object by ``object_type``
    and ``object`` (a target system when the type is ``<app>.targetsystem``)."""
    details = details if isinstance(details, Mapping) else {}
    if not target:
        named = details.get("target") or details.get("target_system")
        if not named and str(details.get("object_type", "")).endswith(".targetsystem"):
            named = details.get("object")
        target = named if isinstance(named, str) else ""
    if not change_id:
        named = details.get("change_id")
        change_id = named if isinstance(named, str) else ""
    # The index's columns are as wide as the entry's: a longer value in details is not a subject.
    return (target if len(target) <= 200 else ""), (change_id if len(change_id) <= 200 else "")


def subjects_rebuild(*, using: str | None = None, batch: int = REBUILD_BATCH, model=AuditEntry, index=EntrySubject) -> int:
    """Recompute the index row of every chained entry, a batch of sequence numbers per transaction:
    rows are replaced, missing ones added, and rows beyond the trail removed. Writers go on appending
    meanwhile (each writes its own entry's row; the rebuild stops at the head it first read). Returns
    the number of entries indexed. ``model`` and ``index`` are the migration's historical models."""
    using = using or router.db_for_write(index)
    last = model.objects.using(using).exclude(seq=None).order_by("-seq").values_list("seq", flat=True).first() or 0
    indexed = 0
    for lo in range(1, last + 1, batch):
        hi = min(lo + batch - 1, last)
        rows = model.objects.using(using).filter(seq__gte=lo, seq__lte=hi).order_by("seq").values_list("seq", "target", "change_id", "details")
        subjects = []
        for seq, target, change_id, details in rows.iterator(chunk_size=batch):
            subject_target, subject_change = entry_subject(target=target, change_id=change_id, details=details)
            subjects.append(index(entry_id=seq, target=subject_target, change_id=subject_change))
        with transaction.atomic(using=using):
            index.objects.using(using).filter(entry_id__gte=lo, entry_id__lte=hi).delete()
            index.objects.using(using).bulk_create(subjects, batch_size=2000)
        indexed += len(subjects)
    with transaction.atomic(using=using):
        # Rows of entries that are not in the trail (a quarantined row's, or beyond a removed tail).
        index.objects.using(using).filter(entry_id__gt=last).exclude(
            entry_id__in=model.objects.using(using).filter(seq__gt=last).values("seq")
        ).delete()
    return indexed


def subject_write(entry: AuditEntry, *, using: str) -> None:
    """The portable writer's row for a new entry (PostgreSQL writes it in the writer's statement)."""
    target, change_id = entry_subject(target=entry.target, change_id=entry.change_id, details=entry.details)
    table = connections[using].ops.quote_name(EntrySubject._meta.db_table)
    with connections[using].cursor() as cursor:
        # A row left by an entry removed outside the writer is replaced: the index follows the trail.
        cursor.execute(
            f"INSERT INTO {table} (seq, target, change_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (seq) DO UPDATE SET target = excluded.target, change_id = excluded.change_id",
            [entry.seq, target, change_id],
        )
