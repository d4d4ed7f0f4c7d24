"""Workers publish their pipeline digest with their heartbeat (docs/semantics.md, Workers).

The current pipeline of each environment is what the deploy step or the web process recorded
(``DeployedPipeline``); a worker with another digest is stale and never judges. The roles see the
workers as they see runs: only ``view_worker`` is added, only to the role groups that exist.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

SEES_WORKERS = ("Compliance officer", "Engineer", "Approver", "Platform admin")


def grant(apps, schema_editor):
    using = schema_editor.connection.alias
    # Permissions are otherwise created after the last migration (post_migrate).
    create_permissions(global_apps.get_app_config("changes_app"), verbosity=0, apps=apps, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.using(using).filter(content_type__app_label="changes_app", codename="view_worker").first()
    if permission is None:
        return
    for group in Group.objects.using(using).filter(name__in=SEES_WORKERS):
        group.permissions.add(permission)


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0007_platform_admin_quarantines_the_trail"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.CreateModel(
            name="Worker",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=255, unique=True)),
                ("host", models.CharField(max_length=255)),
                ("pid", models.IntegerField()),
                ("environment", models.CharField(db_index=True, max_length=64)),
                ("queue", models.CharField(blank=True, default="", max_length=200)),
                ("digest", models.CharField(max_length=64)),
                ("version", models.CharField(blank=True, default="", max_length=64)),
                ("started_at", models.DateTimeField()),
                ("heartbeat_at", models.DateTimeField(db_index=True)),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={"ordering": ["environment", "name"]},
        ),
        migrations.CreateModel(
            name="DeployedPipeline",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("environment", models.CharField(max_length=64, unique=True)),
                ("digest", models.CharField(max_length=64)),
                ("version", models.CharField(blank=True, default="", max_length=64)),
                ("recorded_by", models.CharField(max_length=200)),
                ("host", models.CharField(blank=True, default="", max_length=255)),
                ("pid", models.IntegerField(blank=True, null=True)),
                ("recorded_at", models.DateTimeField()),
            ],
        ),
        migrations.AlterField(
            model_name="finding",
            name="kind",
            field=models.CharField(
                choices=[
                    ("CHECKSUM_MISMATCH", "Checksum mismatch"),
                    ("MISSING_FROM_CODE", "Applied change missing from code"),
                    ("OUT_OF_ORDER", "Change ordered before an applied one"),
                    ("STALE_STARTED", "Started with no live run"),
                    ("DEAD_RUN", "Run with a dead heartbeat"),
                    ("LOCK_PAST_LEASE", "Lock held past its lease"),
                    ("VERIFY_FAILED", "Verify probe found the effect absent"),
                    ("PROBE_FAILED", "Verify probe raised or timed out"),
                    ("worker.stale", "Worker on code other than the current pipeline"),
                ],
                db_index=True,
                max_length=32,
            ),
        ),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
