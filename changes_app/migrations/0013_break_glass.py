"""Break-glass (issue 23, docs/break-glass.md): the ``break_glass`` permission, the REVIEW request
kind, the fields binding a use to its incident and its review, and one pending request per change
and kind except reviews."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0012_django_migrations")]

    operations = [
        migrations.AlterModelOptions(
            name="targetsystem",
            options={
                "ordering": ["name"],
                "permissions": [
                    ("operate_targetsystem", "Can operate changes on the target system"),
                    ("approve_targetsystem", "Can approve requests on the target system"),
                    ("break_glass", "Can use break-glass on the target system"),
                ],
            },
        ),
        migrations.RemoveConstraint(model_name="changerequest", name="request_one_pending_per_change_and_kind"),
        migrations.AddField(model_name="changerequest", name="break_glass", field=models.BooleanField(default=False)),
        migrations.AddField(model_name="changerequest", name="due_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(model_name="changerequest", name="incident", field=models.CharField(blank=True, default="", max_length=200)),
        migrations.AddField(model_name="changerequest", name="overdue_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(
            model_name="changerequest",
            name="reviewed_request",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="reviews", to="changes_app.changerequest"
            ),
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
                    ("REVIEW", "Break-glass review"),
                ],
                max_length=24,
            ),
        ),
        migrations.AddConstraint(
            model_name="changerequest",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "PENDING"), models.Q(("kind", "REVIEW"), _negated=True)),
                fields=("environment", "change_id", "kind"),
                name="request_one_pending_per_change_and_kind",
            ),
        ),
        migrations.AddConstraint(
            model_name="changerequest",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("kind", "REVIEW"), _negated=True),
                    models.Q(("due_at__isnull", False), ("required_approvals__gte", 2), ("reviewed_request__isnull", False)),
                    _connector="OR",
                ),
                name="request_review_has_subject_due_date_and_two_approvals",
            ),
        ),
    ]
