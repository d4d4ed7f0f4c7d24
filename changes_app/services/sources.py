"""Change sources stored by checksum, and what a change will run, as people read it.

A change's normalised source (docs/semantics.md §2) is stored once per checksum, immutably, when a
request is made for it and when a run applies it. A request page diffs the source its request was
made for against the code as it is now; the evidence of a change reads the same rows.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from audit_app.models import ChangeState
from changes_app.definitions import ChangeDefinition
from changes_app.errors import FlamingockError
from changes_app.models import ChangeRequest, ChangeSource, Run
from changes_app.pipeline.checksums import normalise_text
from changes_app.pipeline.discovery import pipeline_load
from changes_app.services.runs import run_finished
from changes_app.targets.templates import document_steps

#: The longest diff a page shows, in lines; the rest is counted, not shown.
DIFF_LINES = 400


def source_store(*, checksum: str, source: str, kind: str = "") -> None:
    """Store ``source`` (normalised) under ``checksum`` unless a source is stored for it already:
    the first one stays, whoever else stores the same checksum at the same moment."""
    if not checksum:
        return
    ChangeSource.objects.bulk_create([ChangeSource(checksum=checksum, kind=kind, source=normalise_text(source))], ignore_conflicts=True)


def source_of(checksum: str) -> str | None:
    """The stored source of ``checksum``, or ``None`` when none was stored."""
    if not checksum:
        return None
    return ChangeSource.objects.filter(checksum=checksum).values_list("source", flat=True).first()


def change_source_store(change: ChangeDefinition) -> None:
    source_store(checksum=change.checksum, source=change.source, kind=change.kind)


def change_sources_store(changes: list[ChangeDefinition]) -> None:
    """:func:`change_source_store` of many changes in one statement (a run's end: one per change
    cost a round trip each); the first source of a checksum stays, as there."""
    rows: dict[str, ChangeSource] = {}
    for change in changes:
        if change.checksum and change.checksum not in rows:
            rows[change.checksum] = ChangeSource(checksum=change.checksum, kind=change.kind, source=normalise_text(change.source))
    if rows:
        ChangeSource.objects.bulk_create(list(rows.values()), ignore_conflicts=True, batch_size=500)


@dataclass
class SourceDiff:
    """How the source moved from ``old`` to ``new`` (checksums), line by line."""

    old: str
    new: str
    #: (kind, text): ``hunk``, ``del``, ``add`` or ``same``.
    lines: list[tuple[str, str]] = field(default_factory=list)
    #: Lines left out beyond :data:`DIFF_LINES`.
    more: int = 0
    #: ``False`` when the old source was never stored (a request older than the stored sources).
    available: bool = True


def source_diff(*, old_checksum: str, new_checksum: str, new_source: str | None = None) -> SourceDiff | None:
    """The diff between two stored sources (``new_source`` overrides the new one's stored text);
    ``None`` when the checksums are equal."""
    if not old_checksum or not new_checksum or old_checksum == new_checksum:
        return None
    old = source_of(old_checksum)
    new = normalise_text(new_source) if new_source is not None else source_of(new_checksum)
    found = SourceDiff(old=old_checksum, new=new_checksum)
    if old is None or new is None:
        found.available = False
        return found
    lines = []
    for line in list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3))[2:]:
        kind = "hunk" if line.startswith("@@") else "add" if line.startswith("+") else "del" if line.startswith("-") else "same"
        lines.append((kind, line))
    found.lines, found.more = lines[:DIFF_LINES], max(0, len(lines) - DIFF_LINES)
    return found


# -- what a change runs --------------------------------------------------------------------------------


@dataclass
class ScriptStep:
    label: str
    apply: str
    rollback: str
    verify: str


@dataclass
class ChangeScript:
    """What a change runs: the Python source, or the template's steps with their apply, rollback
    and verify payloads as written."""

    kind: str
    template: str = ""
    source: str = ""
    steps: list[ScriptStep] = field(default_factory=list)

    @property
    def verify_steps(self) -> list[str]:
        return [step.label for step in self.steps if step.verify]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "template": self.template,
            "source": self.source,
            "steps": [{"label": s.label, "apply": s.apply, "rollback": s.rollback, "verify": s.verify} for s in self.steps],
        }


def _payload(value: Any) -> str:
    import yaml  # here, not at start-up: the command line never needs it

    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True).strip()


def change_script(change: ChangeDefinition) -> ChangeScript:
    """What ``change`` will run, rollback steps included, readable as written."""
    if change.kind != "template":
        return ChangeScript(kind=change.kind, source=normalise_text(change.source))
    import yaml  # here, not at start-up: the command line never needs it

    try:
        document = yaml.safe_load(change.source)
        written = document_steps(document) if isinstance(document, dict) else []
    except yaml.YAMLError:
        written = []
    steps = []
    for index, step in enumerate(written, start=1):
        step = step if isinstance(step, dict) else {}
        steps.append(
            ScriptStep(
                label=str(step.get("name") or f"step {index}"),
                apply=_payload(step.get("apply")),
                rollback=_payload(step.get("rollback")),
                verify=_payload(step.get("verify")),
            )
        )
    return ChangeScript(kind=change.kind, template=change.template, source=normalise_text(change.source), steps=steps)


# -- storing, when a request is made and when a change is applied ------------------------------------


def _pipeline_change(change_id: str) -> ChangeDefinition | None:
    try:
        pipeline = pipeline_load()
    except FlamingockError:
        return None
    return pipeline.by_id.get(change_id) if pipeline.valid else None


@receiver(post_save, sender=ChangeRequest)
def _store_on_request(sender, *, instance: ChangeRequest, created: bool, raw: bool = False, **kwargs) -> None:
    """A new request: the source it was made for (the code's, whose checksum it records)."""
    if not created or raw:
        return
    change = _pipeline_change(instance.change_id)
    if change is not None and change.checksum == instance.checksum:
        change_source_store(change)


@receiver(run_finished)
def _store_on_run_finished(sender, *, run: Run, **kwargs) -> None:
    """A finished run: the source of every change it left applied with the code's checksum."""
    touched = {row.get("change_id") for row in run.results or [] if row.get("change_id")}
    if not touched:
        return
    recorded = dict(ChangeState.objects.filter(change_id__in=touched).values_list("change_id", "checksum"))
    try:
        pipeline = pipeline_load()
    except FlamingockError:
        return
    if not pipeline.valid:
        return
    changes = [pipeline.by_id.get(change_id) for change_id in sorted(touched)]
    change_sources_store([change for change in changes if change is not None and recorded.get(change.id) == change.checksum])
