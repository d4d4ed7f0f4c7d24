"""Chain the entries written before the chain existed, create the head, and install the triggers
that make the trail append-only in the database itself (PostgreSQL and SQLite)."""

from django.db import migrations

from audit_app.chain import GENESIS_HASH, entry_hash, HASHED_FIELDS, normalise_details

APPEND_ONLY_TABLES = ("audit_app_auditentry", "audit_app_auditcheckpoint")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION flamingock_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql
"""


def install(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(POSTGRES_FUNCTION)
            for table in APPEND_ONLY_TABLES:
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
                cursor.execute(
                    f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION flamingock_append_only()"
                )
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
                cursor.execute(
                    f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION flamingock_append_only()"
                )
        elif connection.vendor == "sqlite":
            for table in APPEND_ONLY_TABLES:
                for operation in ("UPDATE", "DELETE"):
                    cursor.execute(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: {operation} on {table} is refused'); END"
                    )


def uninstall(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        for table in APPEND_ONLY_TABLES:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            elif connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")


def chain_existing(apps, schema_editor):
    AuditEntry = apps.get_model("audit_app", "AuditEntry")
    ChainHead = apps.get_model("audit_app", "ChainHead")
    seq, previous, last_id = 0, GENESIS_HASH, None
    for entry in AuditEntry.objects.using(schema_editor.connection.alias).order_by("id").iterator():
        seq += 1
        fields = {name: getattr(entry, name if name != "actor_user_id" else "actor_user_id") for name in HASHED_FIELDS}
        fields["details"] = normalise_details(entry.details)
        digest = entry_hash(seq, previous, entry.created_at, fields)
        AuditEntry.objects.using(schema_editor.connection.alias).filter(pk=entry.pk).update(
            seq=seq, hash_version=1, prev_hash=previous, entry_hash=digest, details=fields["details"]
        )
        previous, last_id = digest, entry.pk
    ChainHead.objects.using(schema_editor.connection.alias).update_or_create(id=1, defaults={"seq": seq, "entry_hash": previous, "entry_id": last_id})


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0002_hash_chain")]

    operations = [
        migrations.RunPython(chain_existing, migrations.RunPython.noop),
        migrations.RunPython(install, uninstall),
    ]
