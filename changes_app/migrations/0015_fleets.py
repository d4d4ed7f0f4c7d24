"""Fleets (issue 22): members of target groups, fleet runs and their members (one child run each).

The per-member state projection is audit_app's (0008_member); member fencing tokens are rows of
the fence table, one per member lock, not a sequence per member."""

import django.db.models.deletion
import django.db.models.functions.datetime
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("changes_app", "0014_evidence"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="FleetMember",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("target", models.CharField(max_length=200)),
                ("name", models.CharField(max_length=200)),
                ("discovered_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ("removed_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["target", "name"],
                "constraints": [models.UniqueConstraint(fields=("target", "name"), name="fleet_member_unique")],
            },
        ),
        migrations.CreateModel(
            name="FleetRun",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("target", models.CharField(max_length=200)),
                ("environment", models.CharField(max_length=64)),
                ("source", models.CharField(max_length=16)),
                ("actor", models.CharField(max_length=200)),
                (
                    "status",
                    models.CharField(choices=[("RUNNING", "Running"), ("FINISHED", "Finished")], db_index=True, default="RUNNING", max_length=16),
                ),
                (
                    "result",
                    models.CharField(
                        blank=True,
                        choices=[("SUCCEEDED", "Succeeded"), ("HALTED", "Halted"), ("PARTIAL", "Partial"), ("CANCELLED", "Cancelled")],
                        default="",
                        max_length=16,
                    ),
                ),
                ("canary", models.PositiveIntegerField(default=1)),
                ("wave_size", models.PositiveIntegerField(default=10)),
                ("concurrency", models.PositiveIntegerField(default=4)),
                ("max_failures", models.PositiveIntegerField(default=1)),
                ("checksums", models.JSONField(blank=True, default=dict)),
                ("wave", models.IntegerField(default=0)),
                ("halted", models.BooleanField(default=False)),
                ("status_reason", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), db_index=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("cancel_requested_at", models.DateTimeField(blank=True, null=True)),
                ("cancel_requested_by", models.CharField(blank=True, default="", max_length=200)),
                (
                    "started_by",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="FleetMemberRun",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("member", models.CharField(max_length=200)),
                ("wave", models.IntegerField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("PENDING", "Pending"),
                            ("QUEUED", "Queued"),
                            ("RUNNING", "Running"),
                            ("SUCCEEDED", "Succeeded"),
                            ("FAILED", "Failed"),
                            ("NOT_STARTED", "Not started"),
                        ],
                        default="PENDING",
                        max_length=16,
                    ),
                ),
                ("attempts", models.IntegerField(default=0)),
                ("reason", models.TextField(blank=True, default="")),
                ("queued_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "run",
                    models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="changes_app.run"),
                ),
                ("fleet_run", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="members", to="changes_app.fleetrun")),
            ],
            options={
                "ordering": ["wave", "member"],
                "indexes": [models.Index(fields=["fleet_run", "status"], name="fleet_member_run_status_idx")],
                "constraints": [models.UniqueConstraint(fields=("fleet_run", "member"), name="fleet_member_run_unique")],
            },
        ),
    ]
