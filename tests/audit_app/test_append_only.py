"""The trail is append-only at every layer (docs/semantics.md §11): the model and its queryset, the admin, a
user's deletion, and raw SQL, which the database triggers refuse, for entries and checkpoints."""

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from audit_app.integrity import audit_verify, checkpoint_write
from audit_app.models import AppendOnlyError, AuditCheckpoint, AuditEntry
from audit_app.services import Actor
from tests.support.audit import (
    CHECKPOINT_TABLE,
    ENTRY_TABLE,
    entries_write,
    entry_write,
    sql,
    trail_rows,
    trail_seqs,
    trigger_names,
    triggers_dropped,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry():
    entries_write(2)
    return entry_write("run.started", reason="original")


@pytest.fixture
def checkpoint(entry):
    return checkpoint_write(reason="test", force=True)


def stored(model, pk) -> dict:
    return model.objects.filter(pk=pk).values().get()


# -- the model and its queryset -----------------------------------------------------------------------


ENTRY_ORM_WRITES = {
    "instance save": lambda row: (setattr(row, "reason", "rewritten"), row.save()),
    "instance save forcing an update": lambda row: row.save(force_update=True),
    "instance save of selected fields": lambda row: row.save(update_fields=["reason"]),
    "instance delete": lambda row: row.delete(),
    "queryset update": lambda row: type(row).objects.filter(pk=row.pk).update(reason="rewritten"),
    "manager-wide update": lambda row: type(row).objects.update(reason="rewritten"),
    "queryset delete": lambda row: type(row).objects.filter(pk=row.pk).delete(),
    "manager-wide delete": lambda row: type(row).objects.all().delete(),
    "raw delete": lambda row: type(row).objects.filter(pk=row.pk)._raw_delete(connection.alias),
    "bulk update": lambda row: type(row).objects.bulk_update([row], ["seq"]),
}


@pytest.mark.parametrize("write", ENTRY_ORM_WRITES.values(), ids=ENTRY_ORM_WRITES.keys())
def test_orm_refuses_to_change_or_remove_an_entry(entry, write):
    before = stored(AuditEntry, entry.pk)
    trail = trail_rows()

    with pytest.raises(AppendOnlyError):
        write(AuditEntry.objects.get(pk=entry.pk))

    assert stored(AuditEntry, entry.pk) == before
    assert trail_rows() == trail


@pytest.mark.parametrize("write", ENTRY_ORM_WRITES.values(), ids=ENTRY_ORM_WRITES.keys())
def test_orm_refuses_to_change_or_remove_a_checkpoint(checkpoint, write):
    before = stored(AuditCheckpoint, checkpoint.pk)

    with pytest.raises(AppendOnlyError):
        write(AuditCheckpoint.objects.get(pk=checkpoint.pk))

    assert stored(AuditCheckpoint, checkpoint.pk) == before


def test_refused_orm_writes_leave_the_chain_intact(entry):
    for write in ENTRY_ORM_WRITES.values():
        with pytest.raises(AppendOnlyError):
            write(AuditEntry.objects.get(pk=entry.pk))

    assert audit_verify().ok


# -- a user's deletion --------------------------------------------------------------------------------


def test_deleting_a_user_leaves_their_entries_intact():
    user = get_user_model().objects.create_user("leaver")
    user_id = user.pk
    written = entries_write(3, actor=Actor(name="leaver", user_id=user_id, via="admin"))
    before = [stored(AuditEntry, row.pk) for row in written]

    user.delete()

    assert [stored(AuditEntry, row.pk) for row in written] == before
    assert {row["actor_user_id"] for row in before} == {user_id}
    assert audit_verify().ok


def test_trail_has_no_foreign_key_a_deletion_could_cascade_through():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, ENTRY_TABLE)

    assert [name for name, constraint in constraints.items() if constraint["foreign_key"]] == []


# -- the admin ----------------------------------------------------------------------------------------


@pytest.fixture
def superuser_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", None)
    client.force_login(user)
    return client


def test_admin_has_no_add_view_for_entries(superuser_client, entry):
    trail = trail_rows()

    assert superuser_client.get(reverse("admin:audit_app_auditentry_add")).status_code == 403
    assert superuser_client.post(reverse("admin:audit_app_auditentry_add"), {"event": "run.started", "actor": "x"}).status_code == 403
    assert trail_rows() == trail


def test_admin_entry_page_is_read_only_and_refuses_a_post(superuser_client, entry):
    before = stored(AuditEntry, entry.pk)
    url = reverse("admin:audit_app_auditentry_change", args=[entry.pk])

    page = superuser_client.get(url)
    posted = superuser_client.post(url, {"reason": "rewritten", "event": "run.started", "actor": "x"})

    assert page.status_code == 200
    assert b'name="reason"' not in page.content
    assert b'name="_save"' not in page.content
    assert posted.status_code == 403
    assert stored(AuditEntry, entry.pk) == before


def test_admin_refuses_to_delete_an_entry(superuser_client, entry):
    url = reverse("admin:audit_app_auditentry_delete", args=[entry.pk])

    assert superuser_client.get(url).status_code == 403
    assert superuser_client.post(url, {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_admin_entry_list_offers_no_delete_action(superuser_client, entry):
    changelist = reverse("admin:audit_app_auditentry_changelist")
    trail = trail_rows()

    page = superuser_client.get(changelist)
    posted = superuser_client.post(changelist, {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"})

    assert page.status_code == 200
    assert b"delete_selected" not in page.content
    assert b'name="action"' not in page.content
    assert posted.status_code in (200, 302)
    assert trail_rows() == trail


@pytest.mark.parametrize("view", ["add", "delete", "change-post"])
def test_admin_refuses_to_add_change_or_delete_a_checkpoint(superuser_client, checkpoint, view):
    before = stored(AuditCheckpoint, checkpoint.pk)
    if view == "add":
        response = superuser_client.get(reverse("admin:audit_app_auditcheckpoint_add"))
    elif view == "delete":
        response = superuser_client.post(reverse("admin:audit_app_auditcheckpoint_delete", args=[checkpoint.pk]), {"post": "yes"})
    else:
        response = superuser_client.post(reverse("admin:audit_app_auditcheckpoint_change", args=[checkpoint.pk]), {"seq": 1})

    assert response.status_code == 403
    assert stored(AuditCheckpoint, checkpoint.pk) == before


def test_deleting_a_user_in_the_admin_leaves_their_entries_intact(superuser_client):
    user = get_user_model().objects.create_user("leaver")
    written = entries_write(2, actor=Actor(name="leaver", user_id=user.pk, via="admin"))
    before = [stored(AuditEntry, row.pk) for row in written]
    url = reverse("admin:auth_user_delete", args=[user.pk])

    confirmation = superuser_client.get(url)
    deleted = superuser_client.post(url, {"post": "yes"})

    assert confirmation.status_code == 200
    assert dict(confirmation.context["model_count"]) == {"users": 1}
    assert "audit entr" not in str(confirmation.context["deleted_objects"]).lower()
    assert deleted.status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert [stored(AuditEntry, row.pk) for row in written] == before


# -- raw SQL and the database triggers ----------------------------------------------------------------


RAW_WRITES = {
    "update one entry": f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE id = %(entry)s",
    "update every entry": f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten'",
    "delete one entry": f"DELETE FROM {ENTRY_TABLE} WHERE id = %(entry)s",
    "delete every entry": f"DELETE FROM {ENTRY_TABLE}",
    "update a checkpoint": f"UPDATE {CHECKPOINT_TABLE} SET seq = 1 WHERE id = %(checkpoint)s",
    "delete a checkpoint": f"DELETE FROM {CHECKPOINT_TABLE} WHERE id = %(checkpoint)s",
    "delete every checkpoint": f"DELETE FROM {CHECKPOINT_TABLE}",
}


def raw_refused(statement: str) -> DatabaseError:
    with pytest.raises(DatabaseError, match="append-only") as refused:
        with transaction.atomic():
            sql(statement)
    return refused.value


@pytest.mark.parametrize("statement", RAW_WRITES.values(), ids=RAW_WRITES.keys())
def test_trigger_refuses_raw_update_and_delete(checkpoint, entry, statement):
    entries_before = list(AuditEntry.objects.order_by("id").values())
    checkpoints_before = list(AuditCheckpoint.objects.order_by("id").values())

    raw_refused(statement % {"entry": entry.pk, "checkpoint": checkpoint.pk})

    assert list(AuditEntry.objects.order_by("id").values()) == entries_before
    assert list(AuditCheckpoint.objects.order_by("id").values()) == checkpoints_before


@pytest.mark.postgres
@pytest.mark.parametrize("table", [ENTRY_TABLE, CHECKPOINT_TABLE])
def test_trigger_refuses_truncate_on_postgresql(checkpoint, table):
    count = AuditEntry.objects.count(), AuditCheckpoint.objects.count()

    raw_refused(f"TRUNCATE {table}")
    raw_refused(f"TRUNCATE {table} CASCADE")

    assert (AuditEntry.objects.count(), AuditCheckpoint.objects.count()) == count


def test_triggers_are_installed_on_both_tables():
    if connection.vendor == "postgresql":
        expected = {f"{table}_{kind}" for table in (ENTRY_TABLE, CHECKPOINT_TABLE) for kind in ("no_change", "no_truncate")}
    else:
        expected = {f"{table}_{kind}" for table in (ENTRY_TABLE, CHECKPOINT_TABLE) for kind in ("no_update", "no_delete")}

    assert trigger_names() == expected


def test_triggers_still_let_the_writer_append(entry):
    before = trail_seqs()

    appended = entry_write("run.finished")

    assert trail_seqs() == [*before, entry.seq + 1]
    assert appended.seq == entry.seq + 1
    assert audit_verify().ok


def test_only_a_superuser_dropping_the_triggers_lets_raw_sql_through(entry):
    with triggers_dropped():
        assert trigger_names() == set()
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE id = %s", [entry.pk])

    assert AuditEntry.objects.get(pk=entry.pk).reason == "rewritten"
    assert len(trigger_names()) == 4
    raw_refused(f"UPDATE {ENTRY_TABLE} SET reason = 'again' WHERE id = {entry.pk}")
