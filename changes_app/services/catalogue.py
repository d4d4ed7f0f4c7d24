"""The catalogue: target systems and change definitions mirrored as rows (never deleted)."""

from __future__ import annotations

import weakref

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from changes_app.models import ChangeRecord, TargetSystem
from changes_app.pipeline import django_migrations
from changes_app.pipeline.discovery import Pipeline, pipeline_load
from changes_app.targets.base import target_systems


def target_systems_sync() -> None:
    """Mirror configured target systems as rows: create, update the connection summary, retire;
    never delete, never touch what is governed (owner, policies, permissions)."""
    # A governed Django alias is a target too: permissions and policies name it (docs/django-migrations.md).
    configured = {**django_migrations.targets(), **target_systems()}
    existing = {row.name: row for row in TargetSystem.objects.all()}
    for name, system in configured.items():
        row = existing.get(name)
        values = {"kind": system.kind, "description": system.description, "configuration": system.describe(), "retired_at": None}
        if row is None:
            # Workers starting their first runs together may create the same row: the first one wins.
            TargetSystem.objects.bulk_create([TargetSystem(name=name, **values)], ignore_conflicts=True)
        elif any(getattr(row, key) != value for key, value in values.items()):
            TargetSystem.objects.filter(pk=row.pk).update(**values)
    gone = [row.pk for name, row in existing.items() if name not in configured and row.retired_at is None]
    if gone:
        TargetSystem.objects.filter(pk__in=gone, retired_at__isnull=True).update(retired_at=timezone.now())


#: Per database alias: the pipeline this process last mirrored, and the catalogue's stamp right after.
_catalogue_synced: dict[str, tuple[weakref.ref, tuple]] = {}


def _catalogue_stamp() -> tuple:
    """What changes whenever anyone creates, updates or retires a change record: one query."""
    found = ChangeRecord.objects.aggregate(rows=Count("id"), live=Count("id", filter=Q(removed_at__isnull=True)), synced=Max("synced_at"))
    return found["rows"], found["live"], found["synced"]


def catalogue_sync(*, pipeline: Pipeline | None = None) -> None:
    """Mirror change definitions in the database; changes gone from code keep their row.

    Every run start calls it, so the steady state is cheap: when this process already mirrored
    this very pipeline and nobody touched a change record since (same stamp), the rows are not
    read again. Another code version syncing, a removal, a restored database: the stamp differs
    and the full comparison runs.
    """
    pipeline = pipeline or pipeline_load()
    target_systems_sync()
    alias = ChangeRecord.objects.db
    synced = _catalogue_synced.get(alias)
    if synced is not None and synced[0]() is pipeline and synced[1] == _catalogue_stamp():
        return
    existing = {row.change_id: row for row in ChangeRecord.objects.all()}
    create, update = [], []
    fields = (
        "stage",
        "order",
        "author",
        "target",
        "kind",
        "template",
        "description",
        "path",
        "line",
        "source",
        "checksum",
        "transactional",
        "recovery",
        "environments",
        "has_rollback",
        "has_verify",
        "removed_at",
    )
    now = timezone.now()
    for change in pipeline.by_id.values():
        values = {
            "stage": change.stage,
            "order": change.order,
            "author": change.author,
            "target": change.target,
            "kind": change.kind,
            "template": change.template,
            "description": change.description,
            "path": change.path,
            "line": change.line,
            "source": change.source,
            "checksum": change.checksum,
            "transactional": change.transactional,
            "recovery": change.recovery.value,
            "environments": change.environments,
            "has_rollback": change.has_rollback,
            "has_verify": change.has_verify,
            "removed_at": None,
        }
        row = existing.get(change.id)
        if row is None:
            create.append({"change_id": change.id, **values})
        elif any(getattr(row, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            row.synced_at = now
            update.append(row)
    gone = [row.pk for change_id, row in existing.items() if change_id not in pipeline.by_id and row.removed_at is None]
    if create or update or gone:
        with transaction.atomic():
            if create:
                _catalogue_insert(create)
            if update:
                ChangeRecord.objects.bulk_update(update, [*fields, "synced_at"], batch_size=500)
            if gone:
                ChangeRecord.objects.filter(pk__in=gone, removed_at__isnull=True).update(removed_at=now)
    _catalogue_synced[alias] = (weakref.ref(pipeline), _catalogue_stamp())


def _catalogue_insert(rows: list[dict]) -> None:
    """New change records; a row that another process mirrored meanwhile is skipped."""
    ChangeRecord.objects.bulk_create([ChangeRecord(**row) for row in rows], batch_size=500, ignore_conflicts=True)
