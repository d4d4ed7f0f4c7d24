"""Django migrations governed (issue 21): adoption, the ADOPT request kind, the drift kinds, the SQL
rendered for approvers."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("changes_app", "0011_schedule_changed_finding"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="changerequest",
            name="rendered",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="changerequest",
            name="kind",
            field=models.CharField(
                choices=[
                    ("APPLY", "Apply"),
                    ("UNDO", "Undo"),
                    ("REAPPLY", "Re-apply"),
                    ("MARK_APPLIED", "Mark as applied"),
                    ("MARK_ROLLED_BACK", "Mark as rolled back"),
                    ("SKIP", "Skip"),
                    ("ACCEPT_CHECKSUM", "Accept checksum"),
                    ("ADOPT", "Adopt a database's Django migrations"),
                ],
                max_length=24,
            ),
        ),
        migrations.AlterField(
            model_name="run",
            name="kind",
            field=models.CharField(
                choices=[
                    ("PIPELINE", "Pipeline"),
                    ("UNDO", "Undo"),
                    ("FIX", "Manual fix"),
                    ("SKIP", "Skip"),
                    ("REAPPLY", "Re-apply"),
                    ("ACCEPT_CHECKSUM", "Accept checksum"),
                    ("ADOPT", "Adopt a database's Django migrations"),
                ],
                default="PIPELINE",
                max_length=24,
            ),
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
                    ("SCHEDULE_CHANGED", "Verification or drift schedule changed"),
                    ("applied_outside_governance", "Django migration applied outside governance"),
                    ("unapplied_outside_governance", "Django migration unapplied outside governance"),
                    ("migrate.override", "Plain migrate forced in a protected environment"),
                ],
                db_index=True,
                max_length=32,
            ),
        ),
        migrations.CreateModel(
            name="DjangoAdoption",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("alias", models.CharField(max_length=100, unique=True)),
                ("adopted_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("adopted_by_name", models.CharField(max_length=200)),
                ("reason", models.TextField()),
                ("migrations", models.JSONField(blank=True, default=list)),
                (
                    "adopted_by",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
                (
                    "request",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="changes_app.changerequest"
                    ),
                ),
            ],
            options={"ordering": ["alias"]},
        ),
    ]
