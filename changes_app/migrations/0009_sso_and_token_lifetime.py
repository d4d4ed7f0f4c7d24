"""Single sign-on and personal API tokens' maximum lifetime (docs/sso.md)."""

from datetime import timedelta

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def tokens_bound(apps, schema_editor):
    """A token of the previous release may have no expiry, or one beyond the maximum: it gets the
    maximum from the upgrade, so that nothing stops working at the upgrade and nothing lives forever."""
    ApiToken = apps.get_model("changes_app", "ApiToken")
    latest = timezone.now() + timedelta(days=getattr(settings, "FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS", 90))
    tokens = ApiToken.objects.using(schema_editor.connection.alias).filter(revoked_at__isnull=True)
    tokens.filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=latest)).update(expires_at=latest)


class Migration(migrations.Migration):
    dependencies = [
        ("changes_app", "0008_workers"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="Blank: the longest lifetime allowed.", null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="revoked_reason",
            field=models.CharField(blank=True, default="", editable=False, max_length=200),
        ),
        migrations.RunPython(tokens_bound, migrations.RunPython.noop),
        migrations.CreateModel(
            name="SsoIdentity",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("issuer", models.CharField(max_length=500)),
                ("subject", models.CharField(max_length=255)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("last_login_at", models.DateTimeField(blank=True, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="flamingock_sso_identities", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "SSO identity",
                "verbose_name_plural": "SSO identities",
                "constraints": [models.UniqueConstraint(fields=("issuer", "subject"), name="sso_identity_one_user_per_subject")],
            },
        ),
    ]
