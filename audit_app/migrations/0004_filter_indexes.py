"""Indexes for the admin's filters on the trail (environment, target, stage, state, actor), each followed
by ``seq`` so that a filtered page is read in chain order and a filter's values by a skip scan.

On PostgreSQL they are built ``CONCURRENTLY``: writers keep appending to the trail meanwhile (a plain
``CREATE INDEX`` would hold them for the seconds a million entries take)."""

from django.db import migrations, models


class AddIndexWithoutBlockingWriters(migrations.AddIndex):
    """``AddIndex``, built concurrently on PostgreSQL (the migration must not be atomic)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audit_app", "0003_chain_and_append_only_triggers")]

    operations = [
        AddIndexWithoutBlockingWriters(model_name="auditentry", index=models.Index(fields=[column, "seq"], name=f"audit_{column}_seq_idx"))
        for column in ("environment", "target", "stage", "state", "actor")
    ]
