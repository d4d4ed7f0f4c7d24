"""Evidence packs (issue 23, docs/compliance.md "Evidence packs"): a row per pack asked for, and the
``generate_evidence`` permission, given to the Compliance officer role's group where it exists."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.db import migrations, models

COMPLIANCE_OFFICER = "Compliance officer"


def permission_grant(apps, schema_editor):
    """Give the role its new permission; a group its administrators removed is left alone."""
    from django.contrib.auth.management import create_permissions

    using = schema_editor.connection.alias
    app_config = apps.get_app_config("changes_app")
    had_models = getattr(app_config, "models_module", None)
    app_config.models_module = had_models or True
    try:
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
    finally:
        app_config.models_module = had_models
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.using(using).filter(name=COMPLIANCE_OFFICER).first()
    permission = Permission.objects.using(using).filter(content_type__app_label="changes_app", codename="generate_evidence").first()
    if group is not None and permission is not None:
        # Without m2m_changed: a role's defaults are the migration's, not a person's grant.
        Group.permissions.through.objects.using(using).get_or_create(group_id=group.pk, permission_id=permission.pk)


class Migration(migrations.Migration):
    dependencies = [
        ("changes_app", "0013_break_glass"),
        ("auth", "0012_alter_user_first_name_max_length"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="EvidencePack",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("requested_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ("requested_by", models.CharField(max_length=200)),
                ("environment", models.CharField(max_length=64)),
                ("targets", models.JSONField(blank=True, default=list)),
                ("members", models.JSONField(blank=True, default=list)),
                ("period_from", models.DateTimeField()),
                ("period_to", models.DateTimeField()),
                (
                    "status",
                    models.CharField(
                        choices=[("QUEUED", "Queued"), ("RUNNING", "Running"), ("DONE", "Done"), ("FAILED", "Failed")],
                        default="QUEUED",
                        max_length=16,
                    ),
                ),
                ("progress", models.BigIntegerField(default=0)),
                ("total", models.BigIntegerField(blank=True, null=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("file_path", models.CharField(blank=True, default="", max_length=500)),
                ("manifest_sha256", models.CharField(blank=True, default="", max_length=64)),
                ("results", models.JSONField(blank=True, default=dict)),
                ("error", models.TextField(blank=True, default="")),
                (
                    "requested_by_user",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "evidence pack",
                "ordering": ["-requested_at", "-id"],
                "permissions": [("generate_evidence", "Can generate and download evidence packs")],
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("period_to__gt", models.F("period_from"))), name="evidencepack_period_not_empty")
                ],
            },
        ),
        migrations.RunPython(permission_grant, migrations.RunPython.noop),
    ]
