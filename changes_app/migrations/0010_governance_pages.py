"""The admin as a governance product: stored change sources, declared environments, verify_chain (issue 18).

Change sources are stored by checksum; the upgrade stores the source of every change the catalogue
mirrors (its current code), so that requests made before the upgrade have something to diff against
when the code still matches them.
"""

from django.db import migrations, models
from django.db.models.functions import Now


def _normalise_text(text: str) -> str:
    # Version 1 of the checksum normalisation (changes_app.pipeline.checksums), fixed forever.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def store_catalogue_sources(apps, schema_editor):
    ChangeRecord = apps.get_model("changes_app", "ChangeRecord")
    ChangeSource = apps.get_model("changes_app", "ChangeSource")
    rows = {}
    for checksum, kind, source in ChangeRecord.objects.values_list("checksum", "kind", "source").iterator():
        if checksum and checksum not in rows:
            rows[checksum] = ChangeSource(checksum=checksum, kind=kind, source=_normalise_text(source))
    ChangeSource.objects.bulk_create(list(rows.values()), batch_size=500, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0009_sso_and_token_lifetime")]

    operations = [
        migrations.CreateModel(
            name="ChangeSource",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("checksum", models.CharField(max_length=64, unique=True)),
                ("kind", models.CharField(blank=True, default="", max_length=16)),
                ("source", models.TextField()),
                ("created_at", models.DateTimeField(db_default=Now())),
            ],
            options={"ordering": ["-created_at", "-id"]},
        ),
        migrations.RunPython(store_catalogue_sources, migrations.RunPython.noop),
    ]
