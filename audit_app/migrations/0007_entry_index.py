"""The audit trail as a compliance officer works in it (issue 18).

- ``EntrySubject``: the rebuildable side index that maps every entry to its target and change (filled
  here for the entries already written; the writer fills it for new ones).
- The change id and actor indexes take pattern operator classes on PostgreSQL, so that the search by
  prefix (``LIKE 'x%'``) is served by them under any collation; built ``CONCURRENTLY`` there, as in 0004.
- ``verify_chain``: who may ask for a verification now; granted to the Compliance officer and Platform
  admin groups where they exist (changes_app creates them with it otherwise: its roles name it).
- ``VerificationRequest`` and ``Verification.from_seq``: a requested verification's progress, and the
  range each verification covers.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

#: The role groups that may verify now (changes_app.governance.roles; named here, not imported).
VERIFYING_ROLES = ("Compliance officer", "Platform admin")


class IndexWithoutBlockingWriters(migrations.AddIndex):
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


class RemoveIndexWithoutBlockingWriters(migrations.RemoveIndex):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = from_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            schema_editor.remove_index(model, index, concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            schema_editor.add_index(model, index, concurrently=True)


def subjects_fill(apps, schema_editor):
    from audit_app.subjects import subjects_rebuild

    subjects_rebuild(
        using=schema_editor.connection.alias, model=apps.get_model("audit_app", "AuditEntry"), index=apps.get_model("audit_app", "EntrySubject")
    )


def verify_chain_grant(apps, schema_editor):
    using = schema_editor.connection.alias
    # Permissions are otherwise created after the last migration (post_migrate).
    create_permissions(global_apps.get_app_config("audit_app"), verbosity=0, apps=apps, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.using(using).filter(content_type__app_label="audit_app", codename="verify_chain")
    for group in Group.objects.using(using).filter(name__in=VERIFYING_ROLES):
        group.permissions.add(*permission)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audit_app", "0006_quarantined_entry"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.CreateModel(
            name="EntrySubject",
            fields=[
                (
                    "entry",
                    models.OneToOneField(
                        db_column="seq",
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="subject",
                        serialize=False,
                        to="audit_app.auditentry",
                        to_field="seq",
                    ),
                ),
                ("target", models.CharField(blank=True, default="", max_length=200)),
                ("change_id", models.CharField(blank=True, default="", max_length=200)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["target", "entry"], name="audit_subject_target_idx"),
                    models.Index(fields=["change_id", "entry"], name="audit_subject_change_idx"),
                ]
            },
        ),
        migrations.AddField(model_name="verification", name="from_seq", field=models.BigIntegerField(blank=True, null=True)),
        migrations.CreateModel(
            name="VerificationRequest",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("requested_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ("requested_by", models.CharField(max_length=200)),
                ("requested_by_user_id", models.IntegerField(blank=True, null=True)),
                ("request_entry_id", models.BigIntegerField(blank=True, null=True)),
                (
                    "status",
                    models.CharField(
                        choices=[("QUEUED", "Queued"), ("RUNNING", "Running"), ("DONE", "Done"), ("FAILED", "Failed")],
                        default="QUEUED",
                        max_length=16,
                    ),
                ),
                ("total", models.BigIntegerField(blank=True, null=True)),
                ("entries_checked", models.BigIntegerField(default=0)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("error", models.TextField(blank=True, default="")),
                (
                    "verification",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="audit_app.verification"
                    ),
                ),
            ],
            options={"ordering": ["-id"]},
        ),
        migrations.AlterModelOptions(
            name="auditentry",
            options={
                "ordering": ["-id"],
                "permissions": [("verify_chain", "Can verify the audit chain now")],
                "verbose_name_plural": "audit entries",
            },
        ),
        IndexWithoutBlockingWriters(
            model_name="auditentry",
            index=models.Index(fields=["change_id", "id"], name="audit_change_id_pfx_idx", opclasses=["varchar_pattern_ops", "int8_ops"]),
        ),
        RemoveIndexWithoutBlockingWriters(model_name="auditentry", name="audit_change_id_idx"),
        IndexWithoutBlockingWriters(
            model_name="auditentry",
            index=models.Index(fields=["actor", "seq"], name="audit_actor_seq_pfx_idx", opclasses=["varchar_pattern_ops", "int8_ops"]),
        ),
        RemoveIndexWithoutBlockingWriters(model_name="auditentry", name="audit_actor_seq_idx"),
        migrations.RunPython(subjects_fill, migrations.RunPython.noop),
        migrations.RunPython(verify_chain_grant, migrations.RunPython.noop),
    ]
