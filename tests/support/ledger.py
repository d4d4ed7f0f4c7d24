"""Change files of a given kind, and latest states written through the one ledger writer.

``change_source("c-1", "journal")`` is the text of a Python change on the journal target (a
non-transactional target), ``"app-db"`` one on the audit database (shared transaction) and
``"ext-pg"`` one on the external PostgreSQL (marker). ``state_record(change, "FAILED")`` makes
``FAILED`` the change's latest state exactly as the engine would: through ``audit_record``.
"""

from __future__ import annotations

from django.conf import settings

from audit_app.models import STATE_EVENTS, AuditEntry
from audit_app.services import Actor, ChangeRef, audit_record
from changes_app.definitions import ChangeDefinition
from changes_app.targets.base import target_systems

TEST_ACTOR = Actor(name="tests", via="tests")

#: Kinds of change: the target they act on and the body of their ``apply`` and ``verify``.
KINDS = {
    "journal": (
        "journal",
        "def apply(self, journal, context):\n        journal.write(change=context.change_id)",
        "def verify(self, journal, context):\n        return journal.count(change=context.change_id) > 0",
    ),
    "app-db": (
        "app-db",
        'def apply(self, cursor):\n        cursor.execute("CREATE TABLE {table} (id integer)")',
        'def verify(self, cursor):\n        cursor.execute("SELECT 1")\n        return True',
    ),
    "ext-pg": (
        "ext-pg",
        'def apply(self, cursor):\n        cursor.execute("CREATE TABLE {table} (id integer)")',
        'def verify(self, cursor):\n        cursor.execute("SELECT 1")\n        return True',
    ),
}


def table_name(change_id: str) -> str:
    return "t_" + "".join(char if char.isalnum() else "_" for char in change_id)


def change_source(
    change_id: str,
    kind: str,
    *,
    recovery: str | None = None,
    verify: bool = False,
    environments: list[str] | None = None,
    transactional: bool | None = None,
) -> str:
    """The source of a Python change of ``kind`` (``journal``, ``app-db`` or ``ext-pg``)."""
    target, apply, probe = KINDS[kind]
    lines = [
        "from changes_app.definitions import Change",
        "",
        "",
        "class TheChange(Change):",
        f"    id = {change_id!r}",
        '    author = "tests"',
        f"    target = {target!r}",
    ]
    if recovery is not None:
        lines.append(f"    recovery = {recovery!r}")
    if environments is not None:
        lines.append(f"    environments = {environments!r}")
    if transactional is not None:
        lines.append(f"    transactional = {transactional!r}")
    lines += ["", "    " + apply.format(table=table_name(change_id))]
    if verify:
        lines += ["", "    " + probe]
    return "\n".join(lines) + "\n"


def change_ref(change: ChangeDefinition, *, checksum: str | None = None) -> ChangeRef:
    strategy = target_systems()[change.target].strategy(transactional=change.transactional)
    return ChangeRef(
        id=change.id,
        stage=change.stage,
        order=change.order,
        target=change.target,
        checksum=change.checksum if checksum is None else checksum,
        transaction_strategy=strategy.value,
        recovery_strategy=change.recovery.value,
    )


def state_record(change: ChangeDefinition, state: str, *, checksum: str | None = None) -> AuditEntry:
    """Append ``state`` as the latest state of ``change`` through the one writer."""
    return audit_record(
        event=STATE_EVENTS[state],
        actor=TEST_ACTOR,
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        change=change_ref(change, checksum=checksum),
        state=state,
        reason=f"test: put in {state}",
    )


def entries_of(change_id: str) -> list[tuple[str, str]]:
    """(event, state) of every ledger entry of a change, oldest first."""
    return list(AuditEntry.objects.filter(change_id=change_id).order_by("id").values_list("event", "state"))
