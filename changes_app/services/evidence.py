"""Evidence packs (docs/compliance.md, "Evidence packs"): asked for from the admin, the API or the
command line, made on a worker with progress, downloaded through a permission check.

A pack covers a period (``to`` exclusive) and a scope (target systems and members of target groups
in this environment). Asking needs ``changes_app.generate_evidence`` (the Compliance officer role);
a refusal is recorded (``access.refused``). The row exists before its task is queued, by name, once
the row commits. The worker writes the zip under ``FLAMINGOCK_EVIDENCE_DIR`` (as ``NAME.partial``
until it is complete, touched every few seconds while it is made) and then ``evidence.generated``
(scope, period, manifest hash) in the trail. A pack whose worker died stays RUNNING with its partial
file no longer touched: beat's reaper (:func:`evidence_reap`) marks it FAILED and deletes the file.
Packs are of this environment: one of another is not found, as if it did not exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit_app.evidence.build import pack_build
from audit_app.evidence.pack import partial_path
from audit_app.redaction import redact
from audit_app.services import Actor, audit_record
from changes_app.errors import ActionRefused, NotFound, typed_text
from changes_app.governance.permissions import PermissionRefused, actor_user, environment_protected
from changes_app.governance.refusals import refusals_recorded
from changes_app.models import EvidencePack, TargetSystem
from changes_app.services.queue import task_send

logger = logging.getLogger("flamingock.services")

GENERATE = "changes_app.generate_evidence"
#: The Celery task that makes a pack (changes_app.tasks), queued by its name.
EVIDENCE_TASK = "flamingock.evidence_generate"
#: Progress is written at most this often (seconds).
PROGRESS_EVERY = 0.5
#: Names in a scope, at most.
SCOPE_NAMES = 200
#: How often the worker touches the partial file of the pack it makes (seconds): its heartbeat.
HEARTBEAT_EVERY = 5.0


class EvidenceInvalid(ActionRefused):
    """The period or the scope cannot make a pack; nothing was written."""


def evidence_may(actor: Actor) -> bool:
    """Whether ``actor`` may make and download packs: a user holding the permission, or the local
    operator of an unprotected environment (as for every other action)."""
    user = actor_user(actor)
    if user is None:
        return actor.user_id is None and not environment_protected()
    return user.has_perm(GENERATE)


def evidence_visible(*, user) -> QuerySet[EvidencePack]:
    """The packs of this environment that ``user`` may see and download: all of them with the
    permission, none without."""
    packs = _this_environment()
    return packs if user is not None and user.is_active and user.has_perm(GENERATE) else packs.none()


def _this_environment() -> QuerySet[EvidencePack]:
    return EvidencePack.objects.filter(environment=settings.FLAMINGOCK_ENVIRONMENT)


def evidence_get(*, pack_id: int) -> EvidencePack:
    """A pack of this environment by id; another environment's is not found."""
    pack = _this_environment().filter(pk=pack_id).first()
    if pack is None:
        raise NotFound(f"no evidence pack {pack_id}")
    return pack


def _names(values, what: str, *, typed: bool = False) -> list[str]:
    # Members are typed text, bound for the signed manifest: redacted first (targets must be known names).
    clean = typed_text if typed else str.strip
    names = sorted({clean(str(value)) for value in values or () if str(value).strip()})
    if len(names) > SCOPE_NAMES:
        raise EvidenceInvalid(f"at most {SCOPE_NAMES} {what} in a scope")
    return names


@refusals_recorded("evidence.generate")
def evidence_request(
    *,
    actor: Actor,
    since: datetime,
    until: datetime,
    targets=(),
    members=(),
    queue: bool = True,
) -> EvidencePack:
    """Ask for the pack of ``[since, until)`` for the scope, in this environment; it is queued to a
    worker once the row commits (``queue=False``: the caller makes it, as the command line does)."""
    if not evidence_may(actor):
        raise PermissionRefused(f"{actor.name} may not generate evidence packs ({GENERATE})")
    if timezone.is_naive(since) or timezone.is_naive(until):
        raise EvidenceInvalid("the period's start and end must be dates or times with a time zone")
    if until <= since:
        raise EvidenceInvalid("the period's end (--to, exclusive) must be after its start (--from)")
    targets, members = _names(targets, "target systems"), _names(members, "members", typed=True)
    unknown = sorted(set(targets) - set(TargetSystem.objects.filter(name__in=targets).values_list("name", flat=True)))
    if unknown:
        raise EvidenceInvalid(f"unknown target system(s): {', '.join(unknown)}")
    with transaction.atomic():
        pack = EvidencePack.objects.create(
            requested_by=actor.name,
            requested_by_user=actor_user(actor),
            environment=settings.FLAMINGOCK_ENVIRONMENT,
            targets=targets,
            members=members,
            period_from=since,
            period_to=until,
        )
        if queue:
            pk = pack.pk
            transaction.on_commit(lambda: task_send(EVIDENCE_TASK, args=[pk]))
    return pack


def evidence_controls(pack: EvidencePack) -> list[dict]:
    """The controls as the pack's own ``controls.json`` states them (id, title, result, what it
    checked, each exception with its entry), for the admin's pack page and the API's detail; empty
    when the pack is not done or its file cannot be read (the results kept on the row remain)."""
    if pack.status != EvidencePack.Status.DONE or not pack.file_path:
        return []
    try:
        with zipfile.ZipFile(evidence_dir() / pack.file_path) as archive:
            return list(json.loads(archive.read("controls.json"))["controls"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []


def evidence_dir() -> Path:
    return Path(settings.FLAMINGOCK_EVIDENCE_DIR)


def _file_name(pack: EvidencePack) -> str:
    return f"evidence-{pack.pk}-{pack.environment}-{pack.period_from:%Y%m%d}-{pack.period_to:%Y%m%d}.zip"


def _heartbeat(partial: Path, stop: threading.Event) -> None:
    """Touch ``partial`` until ``stop``: the reaper tells a pack being made from one whose worker died."""
    while not stop.wait(HEARTBEAT_EVERY):
        try:
            os.utime(partial)  # never creates it: once complete it is renamed
        except OSError:  # the reaper deleted it, or the directory went away: the build fails on its own
            return


def _claim(pack_id: int) -> EvidencePack | None:
    with transaction.atomic():
        pack = EvidencePack.objects.select_for_update().filter(pk=pack_id).first()
        if pack is None:
            raise NotFound(f"no evidence pack {pack_id}")
        if pack.status != EvidencePack.Status.QUEUED:
            return None  # a duplicate delivery: another worker has it
        pack.status, pack.started_at = EvidencePack.Status.RUNNING, timezone.now()
        pack.save(update_fields=["status", "started_at"])
    return pack


def evidence_generate(*, pack_id: int) -> EvidencePack:
    """Make a queued pack (the worker's task; the command line in-process). Progress is written to
    the row as the period's entries are; a failure is recorded on the row, never half a file."""
    pack = _claim(pack_id)
    if pack is None:
        return EvidencePack.objects.get(pk=pack_id)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            EvidencePack.objects.filter(pk=pack.pk).update(progress=done, total=total)

    name = _file_name(pack)
    partial = partial_path(evidence_dir() / name)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_heartbeat, args=(partial, stop), name=f"evidence-heartbeat-{pack.pk}", daemon=True)
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
        heartbeat.start()
        result = pack_build(
            path=evidence_dir() / name,
            since=pack.period_from,
            until=pack.period_to,
            environment=pack.environment,
            targets=pack.targets,
            members=pack.members,
            protected_environments=list(settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS),
            drift_ack_hours=settings.FLAMINGOCK_EVIDENCE_DRIFT_ACK_HOURS,
            review_hours=settings.FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS,
            requested_by=pack.requested_by,
            progress=progress,
        )
    except Exception as error:
        logger.exception("evidence pack %s failed", pack.pk)
        with contextlib.suppress(OSError):  # never written, or its directory cannot be
            partial.unlink(missing_ok=True)
        EvidencePack.objects.filter(pk=pack.pk, status=EvidencePack.Status.RUNNING).update(
            status=EvidencePack.Status.FAILED, finished_at=timezone.now(), error=redact(f"{type(error).__name__}: {error}")[:2000]
        )
        return EvidencePack.objects.get(pk=pack.pk)
    finally:
        stop.set()
        if heartbeat.is_alive():
            heartbeat.join()
    results = {control["id"]: control["result"] for control in result.controls}
    with transaction.atomic():
        pack = EvidencePack.objects.select_for_update().get(pk=pack.pk)
        if pack.status != EvidencePack.Status.RUNNING:  # reaped meanwhile: its FAILED stands
            result.path.unlink(missing_ok=True)
            return pack
        pack.status, pack.finished_at = EvidencePack.Status.DONE, timezone.now()
        pack.progress = pack.total = result.entries
        pack.file_path, pack.manifest_sha256, pack.results = name, result.manifest_sha256, results
        pack.save(update_fields=["status", "finished_at", "progress", "total", "file_path", "manifest_sha256", "results"])
        user = pack.requested_by_user
        audit_record(
            event="evidence.generated",
            actor=Actor(name=pack.requested_by, user_id=user.pk if user else None, via="evidence"),
            environment=pack.environment,
            details={
                "pack": pack.pk,
                "scope": {"environment": pack.environment, "targets": pack.targets, "members": pack.members},
                "period": {"from": pack.period_from.isoformat(), "to": pack.period_to.isoformat()},
                "manifest_sha256": result.manifest_sha256,
                "entries": result.entries,
                "results": results,
            },
        )
    return pack


@refusals_recorded("evidence.download", object="evidence pack {pack_id}")
def evidence_file(*, pack_id: int, actor: Actor) -> tuple[EvidencePack, Path]:
    """The file of a finished pack, for ``actor`` (who must hold the permission)."""
    if not evidence_may(actor):
        raise PermissionRefused(f"{actor.name} may not download evidence packs ({GENERATE})")
    pack = evidence_get(pack_id=pack_id)
    if pack.status != EvidencePack.Status.DONE:
        raise ActionRefused(f"evidence pack {pack_id} is {pack.get_status_display().lower()}, not done")
    path = evidence_dir() / pack.file_path
    if not path.is_file():
        raise NotFound(f"the file of evidence pack {pack_id} is no longer in {evidence_dir()}")
    return pack, path


def evidence_reap(*, now: datetime | None = None) -> list[int]:
    """Mark FAILED the RUNNING packs of this environment whose worker died (beat's reaper): their
    partial file untouched (or, never written, their start) for longer than a run's heartbeat may
    lapse (``FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT``); the partial file is deleted. Returns their ids."""
    now = now or timezone.now()
    dead_after = timedelta(seconds=settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT)
    reaped = []
    for pack in _this_environment().filter(status=EvidencePack.Status.RUNNING, started_at__lt=now - dead_after):
        partial = partial_path(evidence_dir() / _file_name(pack))
        try:
            seen = datetime.fromtimestamp(partial.stat().st_mtime, tz=UTC)
        except FileNotFoundError:
            seen = pack.started_at
        if now - seen <= dead_after:
            continue
        error = (
            f"the worker making it stopped: no sign of life since {seen:%Y-%m-%d %H:%M:%S} UTC "
            f"(at {pack.progress} of {pack.total or '?'} entries); ask for the pack again"
        )
        with transaction.atomic():
            if not EvidencePack.objects.filter(pk=pack.pk, status=EvidencePack.Status.RUNNING).update(
                status=EvidencePack.Status.FAILED, finished_at=now, error=error
            ):
                continue
        partial.unlink(missing_ok=True)
        logger.warning("evidence pack %s failed: %s", pack.pk, error)
        reaped.append(pack.pk)
    return reaped
