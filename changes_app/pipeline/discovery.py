"""Discovery and validation of the pipeline.

Each stage is a package of changes: the ``changes`` package of every installed app (unless
``FLAMINGOCK_DISCOVER_APPS`` is false) followed by the packages in ``FLAMINGOCK_STAGES``
(``"package"`` or ``"name=package"``). Validation collects every problem, each with file and line,
before anything runs: a pipeline with problems never executes.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError

from audit_app.models import ChangeState
from changes_app.definitions import Change, ChangeDefinition, Recovery, code_steps, parameter_names
from changes_app.models import ChangeRecord
from changes_app.pipeline import collector, django_migrations
from changes_app.pipeline.checksums import checksum_document, checksum_text, pipeline_digest
from changes_app.targets.base import TargetSystem, target_config_problems, target_systems
from changes_app.targets.templates import PAYLOAD_KEYS, templates

CLASS_LINE = re.compile(r"^[ \t]*class[ \t]+(\w+)", re.MULTILINE)
ID_LINE = re.compile(r"^[ \t]+id[ \t]*(?::[^=\n]*)?=", re.MULTILINE)
FILE_NAME = re.compile(r"^(?P<order>\d+)_[A-Za-z0-9_\-]+\.(?P<ext>py|ya?ml)$")
#: docs/semantics.md §13.2: printable ASCII from [A-Za-z0-9._:-], at most 200 characters.
CHANGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")
#: Ids of Django's migrations (§13.6): no change may take one.
RESERVED_ID_PREFIX = "django:"
#: The largest change file read, unless ``FLAMINGOCK_MAX_CHANGE_BYTES`` says otherwise.
DEFAULT_MAX_CHANGE_BYTES = 256 * 1024
#: How deep the collections of a YAML change may nest.
MAX_YAML_DEPTH = 32
YAML_KEYS = {"id", "author", "target", "template", "transactional", "recovery", "description", "environments", "order", *PAYLOAD_KEYS}


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    path: str = ""
    line: int = 0

    def __str__(self):
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message} [{self.code}]" if where else f"{self.message} [{self.code}]"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "path": self.path, "line": self.line}


@dataclass
class Stage:
    name: str
    package: str
    changes: list[ChangeDefinition] = field(default_factory=list)


@dataclass
class Pipeline:
    stages: list[Stage]
    problems: list[Problem]
    #: Stages left out because a change of theirs targets a disabled system (``"enabled": false``).
    left_out: list[Stage] = field(default_factory=list)
    #: What ``plan`` and ``run`` tell the operator about the pipeline (the stages left out, and why).
    notices: list[str] = field(default_factory=list)

    @cached_property
    def by_id(self) -> dict[str, ChangeDefinition]:
        return {change.id: change for stage in self.stages for change in stage.changes}

    @cached_property
    def digest(self) -> str:
        return pipeline_digest([(change.stage, change.order, change.id, change.checksum) for stage in self.stages for change in stage.changes])

    @property
    def valid(self) -> bool:
        return not self.problems

    def __len__(self):
        return sum(len(stage.changes) for stage in self.stages)


def stage_sources() -> list[tuple[str, str]]:
    """(stage name, package) in settings order."""
    sources = []
    if getattr(settings, "FLAMINGOCK_DISCOVER_APPS", True):
        for app_config in apps.get_app_configs():
            package = f"{app_config.name}.changes"
            try:
                found = importlib.util.find_spec(package) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                sources.append((app_config.label, package))
    for entry in getattr(settings, "FLAMINGOCK_STAGES", []):
        name, _, package = entry.partition("=") if "=" in entry else (entry, "", entry)
        sources.append((name.strip(), package.strip()))
    return sources


def _display_directory(directory: Path) -> str:
    """How a stage directory's files are named in problems: relative to the project when inside it.
    Resolved once per directory (resolving every file costs a ``stat`` per path component)."""
    try:
        return str(directory.resolve().relative_to(Path(settings.BASE_DIR).resolve()))
    except ValueError:
        return str(directory)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def max_change_bytes() -> int:
    return int(getattr(settings, "FLAMINGOCK_MAX_CHANGE_BYTES", DEFAULT_MAX_CHANGE_BYTES))


def change_id_error(change_id: str) -> str:
    """What is wrong with a change id under §13.2 ("" when nothing is)."""
    if not CHANGE_ID.fullmatch(change_id):
        if len(change_id) > 200:
            return f"change id is {len(change_id)} characters long; at most 200 are allowed"
        odd = sorted({char for char in change_id if not CHANGE_ID.fullmatch(char)})
        shown = ", ".join(f"U+{ord(char):04X}" + (f" {char!r}" if char.isprintable() and char.isascii() else "") for char in odd[:5])
        return f"change id {change_id!r} has characters outside [A-Za-z0-9._:-] ({shown})"
    if change_id.startswith(RESERVED_ID_PREFIX):
        return f"change id {change_id!r} starts with {RESERVED_ID_PREFIX!r}, which is reserved for Django migrations"
    return ""


def recorded_change_ids(change_ids: list[str]) -> set[str]:
    """Which of these ids the ledger already holds (a change state or a mirrored change record).
    A database not yet migrated holds none."""
    if not change_ids:
        return set()
    try:
        found = set(ChangeState.objects.filter(change_id__in=change_ids).values_list("change_id", flat=True))
        return found | set(ChangeRecord.objects.filter(change_id__in=change_ids).values_list("change_id", flat=True))
    except DatabaseError:
        return set()


class _YamlRefused(Exception):
    def __init__(self, code: str, message: str, line: int):
        super().__init__(message)
        self.code, self.message, self.line = code, message, line


def _yaml_events_checked(yaml, source: str) -> None:
    """Refuse anchors and aliases (a few lines of aliases expand to gigabytes) and collections
    nested deeper than ``MAX_YAML_DEPTH``, from the event stream, before any node is built."""
    depth = 0
    events = yaml.parse(source, Loader=_yaml_loader(yaml))
    while True:
        try:
            event = next(events, None)
        except yaml.YAMLError as error:
            if "nesting depth" not in str(error):  # libyaml's own limit (1000) comes first when it scans ahead
                raise
            mark = getattr(error, "problem_mark", None)
            raise _YamlRefused("yaml-too-deep", f"YAML nested deeper than {MAX_YAML_DEPTH} levels", mark.line + 1 if mark else 1) from None
        if event is None:
            return
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _YamlRefused("yaml-alias", "YAML anchors (&) and aliases (*) are not allowed in a change: write the value out", line)
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _YamlRefused("yaml-too-deep", f"YAML nested deeper than {MAX_YAML_DEPTH} levels", line)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _yaml_loader(yaml):
    """libyaml's safe loader when PyYAML has it (a hundred times faster), else PyYAML's own."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_load(yaml, source: str):
    """(the root node, the document), parsed once."""
    loader = _yaml_loader(yaml)(source)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


class _Loader:
    def __init__(self, environment_targets: dict[str, TargetSystem]):
        self.targets = environment_targets
        self.problems: list[Problem] = []
        #: (id, problem) of ids breaking §13.2: problems unless the ledger already holds the id.
        self.bad_ids: list[tuple[str, Problem]] = []

    def problem(self, code: str, message: str, path: str = "", line: int = 0) -> None:
        self.problems.append(Problem(code, message, path, line))

    def load_stage(self, name: str, package: str) -> Stage:
        stage = Stage(name=name, package=package)
        try:
            module = importlib.import_module(package)
        except Exception as error:  # the package itself is broken: report, do not crash discovery
            self.problem("stage-import", f"stage {name!r}: cannot import {package!r}: {error}")
            return stage
        # Plain strings, not Path objects: with thousands of changes, building paths cost more than
        # reading the files. scandir reads the file type from the directory itself: no stat() per file.
        files: dict[str, tuple[str, str]] = {}  # path -> (name, directory as shown in problems)
        for directory in getattr(module, "__path__", []):
            shown_directory = _display_directory(Path(directory))
            for entry in os.scandir(directory):
                if entry.is_file() and entry.path not in files:
                    files[entry.path] = (entry.name, shown_directory)
        for path, (file_name, shown_directory) in sorted(files.items(), key=lambda item: item[1][0]):
            if file_name.startswith(("_", ".")) or os.path.splitext(file_name)[1] not in {".py", ".yaml", ".yml"}:
                continue
            shown = file_name if shown_directory == "." else os.path.join(shown_directory, file_name)
            match = FILE_NAME.match(file_name)
            if not match:
                self.problem("bad-order", f"file name {file_name!r} must start with a numeric order prefix, like 0001_name", shown, 1)
                continue
            limit = max_change_bytes()
            size = os.path.getsize(path)
            if size > limit:  # before the file is parsed or imported
                self.problem(
                    "file-too-large", f"the change file is {size} bytes; at most {limit} are allowed (FLAMINGOCK_MAX_CHANGE_BYTES)", shown, 1
                )
                continue
            loader = self.load_python if match["ext"] == "py" else self.load_yaml
            change = loader(stage, package, path, shown, match["order"])
            if change is not None:
                stage.changes.append(change)
        stage.changes.sort(key=lambda change: change.order)
        return stage

    def _common(self, values: dict[str, Any], lines: dict[str, int], shown: str, prefix: str) -> dict[str, Any] | None:
        ok = True
        for key in ("id", "author", "target"):
            value = values.get(key)
            if not isinstance(value, str) or not value.strip():
                self.problem(f"missing-{key}", f"missing or empty '{key}'", shown, lines.get(key, lines["_"]))
                ok = False
        change_id = values.get("id")
        if isinstance(change_id, str) and change_id.strip():
            error = change_id_error(change_id)
            if error:
                self.bad_ids.append((change_id, Problem("bad-id", error, shown, lines.get("id", lines["_"]))))
        order = values.get("order")
        if order is not None and str(order) != prefix:
            self.problem(
                "conflicting-order", f"declared order {order!r} disagrees with the file name prefix {prefix!r}", shown, lines.get("order", lines["_"])
            )
            ok = False
        recovery = values.get("recovery") or Recovery.MANUAL_INTERVENTION
        if recovery not in Recovery.__members__:
            self.problem("bad-recovery", f"recovery {recovery!r} is not one of {', '.join(Recovery)}", shown, lines.get("recovery", lines["_"]))
            ok = False
        environments = values.get("environments")
        if environments is not None and (not isinstance(environments, list) or not all(isinstance(item, str) for item in environments)):
            self.problem("bad-environments", "'environments' must be a list of environment names", shown, lines.get("environments", lines["_"]))
            ok = False
        transactional = values.get("transactional")
        if transactional is not None and not isinstance(transactional, bool):
            self.problem("bad-transactional", "'transactional' must be true or false", shown, lines.get("transactional", lines["_"]))
            ok = False
        target = self.targets.get(values.get("target")) if isinstance(values.get("target"), str) else None
        if isinstance(values.get("target"), str) and target is None:
            known = ", ".join(sorted(self.targets)) or "none configured"
            self.problem("unknown-target", f"unknown target system {values['target']!r} (known: {known})", shown, lines.get("target", lines["_"]))
            ok = False
        if target is not None and transactional is True and not target.supports_transactions:
            self.problem(
                "not-transactional-target",
                f"'transactional: true' but target {target.name!r} ({target.kind}) cannot run changes in a transaction",
                shown,
                lines.get("transactional", lines["_"]),
            )
            ok = False
        if not ok:
            return None
        return {
            "target_system": target,
            "transactional": target.supports_transactions if transactional is None else transactional,
            "recovery": Recovery(recovery),
            "environments": environments,
        }

    def load_python(self, stage: Stage, package: str, path: str, shown: str, prefix: str) -> ChangeDefinition | None:
        module_name = f"{package}.{os.path.splitext(os.path.basename(path))[0]}"
        try:
            module = importlib.import_module(module_name)
        except SyntaxError as error:
            self.problem("import-error", f"syntax error: {error.msg}", shown, error.lineno or 1)
            return None
        except Exception as error:
            frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)]
            self.problem("import-error", f"cannot import: {type(error).__name__}: {error}", shown, frames[-1].lineno if frames else 1)
            return None
        classes = [
            value
            for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, Change) and value is not Change and value.__module__ == module_name
        ]
        if len(classes) != 1:
            found = ", ".join(cls.__name__ for cls in classes) or "none"
            self.problem("change-class", f"a change module defines exactly one Change subclass (found: {found})", shown, 1)
            return None
        cls = classes[0]
        source = _read_text(path)
        found = next((match for match in CLASS_LINE.finditer(source) if match.group(1) == cls.__name__), None)
        line = source.count("\n", 0, found.start()) + 1 if found else 1
        values = {
            key: getattr(cls, key, None) for key in ("id", "author", "target", "transactional", "recovery", "environments", "order", "description")
        }
        id_line = ID_LINE.search(source, found.end()) if found else None
        lines = {"_": line, **({"id": source.count("\n", 0, id_line.start()) + 1} if id_line else {})}
        common = self._common(values, lines, shown, prefix)
        apply = getattr(cls, "apply", None)
        if not callable(apply):
            self.problem("missing-apply", f"{cls.__name__} has no apply method", shown, line)
            return None
        if common is None:
            return None
        target = common["target_system"]
        offered = target.dependency_names()
        if offered is not None:
            for method_name in ("apply", "rollback", "verify"):
                method = getattr(cls, method_name, None)
                if not callable(method):
                    continue
                unknown = [name for name in parameter_names(method)[1:] if name not in offered]
                if unknown:
                    self.problem(
                        "unknown-dependency",
                        f"{cls.__name__}.{method_name} asks for {', '.join(unknown)}; target {target.name!r} offers {', '.join(sorted(offered))}",
                        shown,
                        method.__code__.co_firstlineno,
                    )
                    return None
        return ChangeDefinition(
            id=values["id"],
            stage=stage.name,
            order=prefix,
            author=values["author"],
            target=values["target"],
            transactional=common["transactional"],
            recovery=common["recovery"],
            description=values["description"] or (inspect.getdoc(cls) or ""),
            environments=common["environments"],
            kind="python",
            template="",
            path=shown,
            line=line,
            source=source,
            checksum=checksum_text(source),
            steps=code_steps(cls()),
        )

    def load_yaml(self, stage: Stage, package: str, path: str, shown: str, prefix: str) -> ChangeDefinition | None:
        import yaml  # here, not at start-up: a pipeline of Python changes never needs it

        source = _read_text(path)
        try:
            _yaml_events_checked(yaml, source)
            node, document = _yaml_load(yaml, source)
        except _YamlRefused as refused:
            self.problem(refused.code, refused.message, shown, refused.line)
            return None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            self.problem("malformed-yaml", f"malformed YAML: {getattr(error, 'problem', None) or error}", shown, mark.line + 1 if mark else 1)
            return None
        if not isinstance(document, dict) or not isinstance(node, yaml.MappingNode):
            self.problem("malformed-yaml", "a YAML change must be a mapping of keys (id, author, target, template, apply...)", shown, 1)
            return None
        lines = {"_": 1, **{key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}}
        unknown = sorted(set(map(str, document)) - YAML_KEYS)
        if unknown:
            self.problem("unknown-key", f"unknown keys {unknown}", shown, lines.get(unknown[0], 1))
        common = self._common(document, lines, shown, prefix)
        template_name = document.get("template")
        template = templates().get(template_name) if isinstance(template_name, str) else None
        if template is None:
            known = ", ".join(sorted(templates()))
            self.problem("unknown-template", f"unknown template {template_name!r} (known: {known})", shown, lines.get("template", 1))
            return None
        if not any(key in document for key in ("apply", "steps")):
            self.problem("missing-apply", "a YAML change needs 'apply' or 'steps'", shown, 1)
            return None
        if common is None or unknown:
            return None
        target = common["target_system"]
        transactional = common["transactional"]
        if document.get("transactional") is None:
            inferred = template.transactional_inferred(document, target)
            transactional = transactional if inferred is None else inferred
        problems = template.problems(document, target, transactional=transactional)
        for key, message in problems:
            self.problem("template", message, shown, lines.get(key.split("[")[0], 1))
        if problems:
            return None
        return ChangeDefinition(
            id=document["id"],
            stage=stage.name,
            order=prefix,
            author=document["author"],
            target=document["target"],
            transactional=transactional,
            recovery=common["recovery"],
            description=document.get("description") or "",
            environments=common["environments"],
            kind="template",
            template=template_name,
            path=shown,
            line=1,
            source=source,
            checksum=checksum_document(document),
            steps=template.steps(document, target),
        )


def pipeline_discover() -> Pipeline:
    """Load every stage and validate the whole pipeline, collecting all problems."""
    loader = _Loader(target_systems())
    for name, messages in target_config_problems().items():
        for message in messages:
            loader.problem("target-config", f"target system {name!r}: {message}")
    stages = [loader.load_stage(name, package) for name, package in stage_sources()]
    seen: dict[str, ChangeDefinition] = {}
    for stage in stages:
        orders: dict[str, ChangeDefinition] = {}
        for change in stage.changes:
            if change.order in orders:
                other = orders[change.order]
                loader.problem(
                    "conflicting-order", f"order {change.order} is used twice in stage {stage.name!r} (also {other.path})", change.path, change.line
                )
            orders[change.order] = change
            if change.id in seen:
                other = seen[change.id]
                loader.problem(
                    "duplicate-id", f"duplicate change id {change.id!r} (first defined at {other.path}:{other.line})", change.path, change.line
                )
            else:
                seen[change.id] = change
    recorded = recorded_change_ids([change_id for change_id, _ in loader.bad_ids])
    notices = []
    for change_id, problem in loader.bad_ids:
        if change_id in recorded:
            # §13.2: an id already recorded that breaks the rule still plans, with a warning.
            notices.append(f"{problem.path}:{problem.line}: {problem.message} (already recorded: kept, but use the rule for new changes)")
        else:
            loader.problems.append(problem)
    pipeline = _leave_out_disabled(Pipeline(stages=stages, problems=loader.problems, notices=notices), loader.targets)
    pipeline.stages[:0] = _django_stages(pipeline.problems)
    return pipeline


def _django_stages(problems: list[Problem]) -> list[Stage]:
    """One stage per governed database alias, run before the other stages (docs/django-migrations.md)."""
    for label in django_migrations.unknown_configured_labels():
        problems.append(Problem("django-app", f"FLAMINGOCK_DJANGO_MIGRATIONS names {label!r}, which is not an installed app"))
    stages, governed_on = [], {}
    for alias in django_migrations.governed_aliases():
        name = django_migrations.stage_name(alias)
        stages.append(Stage(name=name, package=f"django_migrations ({alias})", changes=list(django_migrations.stage_changes(alias))))
        shared = [change.id for change in stages[-1].changes if change.id in governed_on]
        if shared:
            # A change id is one migration on one database: the ledger, the lock and the approvals
            # are keyed by it, so the same migration governed on two aliases would run on the first only.
            first = governed_on[shared[0]]
            problems.append(
                Problem(
                    "duplicate-id",
                    f"{len(shared)} governed Django migration(s) (first {shared[0]!r}) are governed on both database {first!r} "
                    f"and {alias!r}: a change id is one migration on one database. Govern an app's migrations on one alias "
                    '(FLAMINGOCK_DJANGO_MIGRATION_DATABASES; docs/django-migrations.md, "A second alias and MariaDB")',
                )
            )
        governed_on.update((change.id, alias) for change in stages[-1].changes if change.id not in governed_on)
    return stages


def _leave_out_disabled(pipeline: Pipeline, systems: dict[str, TargetSystem]) -> Pipeline:
    """A stage with a change on a disabled target system is left out whole (running part of a stage
    would break its order), and a notice says so."""
    kept = []
    for stage in pipeline.stages:
        disabled = [systems[name] for name in sorted({change.target for change in stage.changes}) if not systems[name].enabled]
        if not disabled:
            kept.append(stage)
            continue
        pipeline.left_out.append(stage)
        why = ", ".join(f"{system.name!r} ({', '.join([system.kind, *system.required_environment()])})" for system in disabled)
        pipeline.notices.append(f'stage {stage.name!r} is left out: target system {why} is disabled ("enabled": false)')
    pipeline.stages = kept
    return pipeline


_cached: Pipeline | None = None
_cache_lock = threading.Lock()


def pipeline_load(*, reload: bool = False) -> Pipeline:
    """The pipeline of this process; ``reload`` re-imports every change module from disk."""
    global _cached
    with _cache_lock:
        if reload or _cached is None:
            if reload:
                _forget_change_modules()
            with collector.paused():
                _cached = pipeline_discover()
        return _cached


def _forget_change_modules() -> None:
    packages = tuple(package for _, package in stage_sources())
    for name in [name for name in sys.modules if name.startswith(packages)]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _on_setting_changed(*, setting, **kwargs):
    global _cached
    if setting.startswith("FLAMINGOCK_") or setting == "INSTALLED_APPS":
        with _cache_lock:
            _cached = None


setting_changed.connect(_on_setting_changed)
