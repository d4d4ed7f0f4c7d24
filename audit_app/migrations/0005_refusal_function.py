"""PostgreSQL: the function the writer's statement calls when it refuses an entry that commits with
its transaction (audit_app/services.py, ``_write_postgres``): the refusal must be an error, so that
the ``COMMIT`` sent with the statement does not commit the change without its entry."""

from django.db import migrations

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION flamingock_refuse(reason text) RETURNS integer AS $$
BEGIN
    RAISE EXCEPTION 'flamingock refused the entry: %', reason USING ERRCODE = 'FLREF', DETAIL = reason;
END
$$ LANGUAGE plpgsql
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(POSTGRES_FUNCTION)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("DROP FUNCTION IF EXISTS flamingock_refuse(text)")


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0004_filter_indexes")]

    operations = [migrations.RunPython(install, uninstall)]
