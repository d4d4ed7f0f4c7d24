"""Fleets (issue 22): the nullable member column, the new hash version, and the per-member state
projection (keyed by member and change).

An entry that names a member of a target group is hashed in chain version 2 (audit_app/chain.py);
every existing entry keeps its version 1 hash: the column is added empty, nothing is rewritten.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0007_entry_index")]

    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="member",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.AddIndex(
            model_name="auditentry",
            index=models.Index(condition=models.Q(member__isnull=False), fields=["member", "seq"], name="audit_member_seq_idx"),
        ),
        migrations.CreateModel(
            name="MemberChangeState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("member", models.CharField(max_length=200)),
                ("change_id", models.CharField(max_length=200)),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("STARTED", "Started"),
                            ("APPLIED", "Applied"),
                            ("FAILED", "Failed"),
                            ("ROLLED_BACK", "Rolled back"),
                            ("ROLLBACK_STARTED", "Rollback started"),
                            ("ROLLBACK_FAILED", "Rollback failed"),
                            ("MANUAL_MARKED_AS_APPLIED", "Manually marked as applied"),
                            ("MANUAL_MARKED_AS_ROLLED_BACK", "Manually marked as rolled back"),
                            ("SKIPPED", "Skipped"),
                        ],
                        max_length=32,
                    ),
                ),  # fmt: skip
                ("checksum", models.CharField(blank=True, default="", max_length=64)),
                ("run_id", models.UUIDField(blank=True, null=True)),
                ("stage", models.CharField(blank=True, default="", max_length=200)),
                ("order", models.CharField(blank=True, default="", max_length=64)),
                ("target", models.CharField(blank=True, default="", max_length=200)),
                ("applied_count", models.IntegerField(default=0)),
                ("updated_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                (
                    "entry",
                    models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name="+", to="audit_app.auditentry"
                    ),
                ),
            ],
            options={
                "verbose_name": "member change state",
                "constraints": [models.UniqueConstraint(fields=("member", "change_id"), name="member_change_state_unique")],
                "indexes": [models.Index(fields=["change_id", "state"], name="member_state_change_idx")],
            },
        ),
    ]
