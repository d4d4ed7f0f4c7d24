"""Fleets (issue 22): the nullable member column and the new hash version. Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0007_entry_index")]

    operations = []
