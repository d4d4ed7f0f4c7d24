"""What approvers see of a Django migration (docs/django-migrations.md, "What approvers see"): its SQL as
``sqlmigrate`` prints it for the target database, and its RunPython code by name and source.

Rendered once when a request is made (a ``post_save`` receiver of a new request on a Django change,
stored in ``ChangeRequest.rendered``) and by ``plan --sql`` / ``GET /api/v1/plan/?sql=1``. Rendering
reads the target database (``sqlmigrate`` loads its recorder and introspects nothing else); a plain
plan never calls it, so a plain plan never touches a target.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.db import connections, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunPython
from django.db.models.signals import post_save
from django.dispatch import receiver

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.redaction import redact
from changes_app.errors import FlamingockError
from changes_app.models import ChangeRequest
from changes_app.pipeline.django_migrations import (
    governed_aliases,
    governed_app_labels,
    governed_migrations,
    is_django_change_id,
    parse_change_id,
)
from changes_app.pipeline.rules import adoption_target
from changes_app.targets.base import target_systems
from changes_app.targets.django_migrations import InstalledAppsLoader

#: Request kinds whose run unapplies the migration: their SQL is ``sqlmigrate --backwards``.
BACKWARDS_KINDS = frozenset({ChangeRequest.Kind.UNDO})
#: Request kinds that run no migration code (adoption records what is already there).
NOT_RENDERED_KINDS = frozenset({ChangeRequest.Kind.ADOPT, ChangeRequest.Kind.MARK_APPLIED, ChangeRequest.Kind.MARK_ROLLED_BACK})
#: The most characters of SQL or source kept per migration; beyond it the text is cut and says so.
MAX_TEXT = 200_000


def _cut(text: str) -> str:
    # What approvers see is stored on the request and served by the API: a secret written into a
    # migration (a RunSQL literal, a password in RunPython source) is masked like any other text.
    text = redact(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n-- ... {len(text) - MAX_TEXT} more characters not stored\n"


def _callable(function) -> dict[str, str]:
    if function is None or function is RunPython.noop:
        return {"name": "noop" if function is RunPython.noop else "", "source": ""}
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        source = ""
    return {"name": name, "source": _cut(source)}


def _target(alias: str) -> str:
    try:
        return adoption_target(alias)
    except FlamingockError:
        return ""


def migration_loader(alias: str) -> MigrationLoader:
    """The graph ``sqlmigrate`` renders from: the alias's recorder read, squashed migrations and the
    ones they replace both kept. Built once per rendering (a request's, or a plan's per alias),
    never per migration; a dependency on an app that is not installed is left out, as for a run."""
    return InstalledAppsLoader(connections[alias], ignore_no_migrations=True, replace_migrations=False)


def _sqlmigrate(loader: MigrationLoader, alias: str, migration, backwards: bool) -> str:
    # What ``sqlmigrate`` prints (django/core/management/commands/sqlmigrate.py and
    # BaseCommand.execute), over a loader built once instead of one per call.
    connection = connections[alias]
    statements = loader.collect_sql([(migration, backwards)])
    if not statements:
        return ""
    output = "\n".join(statements)
    if migration.atomic and connection.features.can_rollback_ddl:
        output = f"{connection.ops.start_transaction_sql()}\n{output}\n{connection.ops.end_transaction_sql()}"
    return output + "\n"


def migration_render(*, change_id: str, alias: str, backwards: bool = False, loader: MigrationLoader | None = None) -> dict[str, Any]:
    """One migration: its SQL for ``alias``'s database (as ``sqlmigrate`` prints it) and its RunPython
    code; an ``error`` instead of what could not be rendered (never raised: a request is still made).
    ``loader``: :func:`migration_loader` of ``alias``, when the caller renders more than one."""
    app_label, name = parse_change_id(change_id)
    connection = connections[alias]
    rendered: dict[str, Any] = {
        "change_id": change_id,
        "alias": alias,
        "target": _target(alias),
        "vendor": connection.vendor,
        "direction": "backwards" if backwards else "forwards",
        "sql": "",
        "run_python": [],
        "error": "",
    }
    try:
        loader = loader if loader is not None else migration_loader(alias)
    except Exception as error:  # the database cannot be read (its recorder), or the graph is broken
        rendered["error"] = f"sqlmigrate: {type(error).__name__}: {error}"
        return rendered
    migration = loader.graph.nodes.get((app_label, name))
    if migration is None:
        rendered["error"] = f"{change_id} is not in the code"
        return rendered
    try:
        rendered["sql"] = _cut(_sqlmigrate(loader, alias, migration, backwards))
    except Exception as error:  # an irreversible operation backwards, a vendor that cannot say
        rendered["error"] = f"sqlmigrate: {type(error).__name__}: {error}"
    for index, operation in enumerate(migration.operations):
        if isinstance(operation, RunPython):
            rendered["run_python"].append(
                {"operation": index, "code": _callable(operation.code), "reverse_code": _callable(operation.reverse_code), "atomic": operation.atomic}
            )
    return rendered


def request_alias(request: ChangeRequest) -> str | None:
    """The database a request on a Django change acts on: its change's target, which is the alias
    (``DjangoChange.target``); a target system of kind ``django`` names its alias in its
    configuration. None when that is not a governed alias."""
    aliases = governed_aliases()
    name = request.target_system.name
    if name in aliases:
        return name
    system = target_systems().get(name)
    alias = system.config.get("alias") if system is not None else None
    return alias if alias in aliases else None


def request_render(request: ChangeRequest) -> dict[str, Any]:
    """What a request on a Django change stores for its approvers; empty for any other request.
    Rendered against the request's own database, never another alias that governs the same app."""
    if request.kind in NOT_RENDERED_KINDS or not is_django_change_id(request.change_id):
        return {}
    try:
        app_label, _ = parse_change_id(request.change_id)
    except ValueError:
        return {}
    alias = request_alias(request)
    if alias is None or app_label not in governed_app_labels():
        return {}
    return {"migrations": [migration_render(change_id=request.change_id, alias=alias, backwards=request.kind in BACKWARDS_KINDS)]}


def plan_render() -> list[dict[str, Any]]:
    """``plan --sql``: every governed migration the ledger has not applied, rendered forwards, with
    one graph per alias."""
    rendered = []
    for alias in governed_aliases():
        migrations = governed_migrations(alias)
        applied = set(
            ChangeState.objects.filter(change_id__in=[m.change_id for m in migrations], state__in=APPLIED_STATES).values_list("change_id", flat=True)
        )
        pending = [m for m in migrations if m.change_id not in applied]
        if not pending:
            continue
        try:
            loader = migration_loader(alias)
        except Exception:
            loader = None  # each migration then says why (migration_render)
        rendered += [migration_render(change_id=m.change_id, alias=alias, loader=loader) for m in pending]
    return rendered


def request_rendered_store(request_id: int) -> dict[str, Any]:
    """Render a request's migration and store it, once: a request that has it keeps what its
    approvers saw, whatever the code or the database say later."""
    request = ChangeRequest.objects.filter(pk=request_id).first()
    if request is None or request.rendered:
        return request.rendered if request is not None else {}
    rendered = request_render(request)
    if rendered:
        ChangeRequest.objects.filter(pk=request_id, rendered={}).update(rendered=rendered)
    return rendered


@receiver(post_save, sender=ChangeRequest, dispatch_uid="flamingock.django_request_rendered")
def _render_on_request_created(sender, *, instance: ChangeRequest, created: bool, raw: bool = False, **kwargs) -> None:
    # When the request is made; after its transaction commits, since a schema editor (which
    # sqlmigrate uses to collect the SQL) cannot start inside SQLite's open transaction.
    if created and not raw and not instance.rendered and is_django_change_id(instance.change_id):
        transaction.on_commit(lambda: request_rendered_store(instance.pk))
