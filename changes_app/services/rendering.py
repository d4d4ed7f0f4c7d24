"""What approvers see of a Django migration (docs/django-migrations.md, "What approvers see"): its SQL as
``sqlmigrate`` prints it for the target database, and its RunPython code by name and source.

Rendered once when a request is made (a ``post_save`` receiver of a new request on a Django change,
stored in ``ChangeRequest.rendered``) and by ``plan --sql`` / ``GET /api/v1/plan/?sql=1``. Rendering
reads the target database (``sqlmigrate`` loads its recorder and introspects nothing else); a plain
plan never calls it, so a plain plan never touches a target.
"""

from __future__ import annotations

import inspect
from io import StringIO
from typing import Any

from django.core.management import call_command
from django.db import connections, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunPython
from django.db.models.signals import post_save
from django.dispatch import receiver

from audit_app.models import APPLIED_STATES, ChangeState
from audit_app.redaction import redact
from changes_app.errors import FlamingockError
from changes_app.models import ChangeRequest
from changes_app.pipeline.django_migrations import governed_aliases, governed_migrations, is_django_change_id, parse_change_id
from changes_app.pipeline.rules import adoption_target

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


def _alias_of(app_label: str, name: str) -> str | None:
    for alias in governed_aliases():
        if any(m.app_label == app_label and m.name == name for m in governed_migrations(alias)):
            return alias
    return None


def migration_render(*, change_id: str, alias: str, backwards: bool = False) -> dict[str, Any]:
    """One migration: its SQL for ``alias``'s database (as ``sqlmigrate`` prints it) and its RunPython
    code; an ``error`` instead of what could not be rendered (never raised: a request is still made)."""
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
    out = StringIO()
    try:
        call_command("sqlmigrate", app_label, name, database=alias, backwards=backwards, stdout=out, no_color=True)
        rendered["sql"] = _cut(out.getvalue())
    except Exception as error:  # an irreversible operation backwards, a vendor that cannot say
        rendered["error"] = f"sqlmigrate: {type(error).__name__}: {error}"
    try:
        migration = MigrationLoader(None, ignore_no_migrations=True).get_migration(app_label, name)
    except KeyError:
        rendered["error"] = rendered["error"] or f"{change_id} is not in the code"
        return rendered
    for index, operation in enumerate(migration.operations):
        if isinstance(operation, RunPython):
            rendered["run_python"].append(
                {"operation": index, "code": _callable(operation.code), "reverse_code": _callable(operation.reverse_code), "atomic": operation.atomic}
            )
    return rendered


def request_render(request: ChangeRequest) -> dict[str, Any]:
    """What a request on a Django change stores for its approvers; empty for any other request."""
    if request.kind in NOT_RENDERED_KINDS or not is_django_change_id(request.change_id):
        return {}
    try:
        app_label, name = parse_change_id(request.change_id)
    except ValueError:
        return {}
    alias = _alias_of(app_label, name)
    if alias is None:
        return {}
    return {"migrations": [migration_render(change_id=request.change_id, alias=alias, backwards=request.kind in BACKWARDS_KINDS)]}


def plan_render() -> list[dict[str, Any]]:
    """``plan --sql``: every governed migration the ledger has not applied, rendered forwards."""
    rendered = []
    for alias in governed_aliases():
        migrations = governed_migrations(alias)
        applied = set(
            ChangeState.objects.filter(change_id__in=[m.change_id for m in migrations], state__in=APPLIED_STATES).values_list("change_id", flat=True)
        )
        rendered += [migration_render(change_id=m.change_id, alias=alias) for m in migrations if m.change_id not in applied]
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
