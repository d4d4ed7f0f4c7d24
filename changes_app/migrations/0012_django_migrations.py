"""Django migrations governed (issue 21): adoption, the ADOPT request kind, the drift kinds. Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0011_schedule_changed_finding")]

    operations = []
