"""The SCHEDULE_CHANGED drift finding: a chain-verification or drift schedule was disabled, edited or
deleted (issue 18)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0010_governance_pages")]

    operations = [
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
                ],
                db_index=True,
                max_length=32,
            ),
        ),
    ]
