"""Fleets (issue 22): target groups, members, per-member ledger and fence. Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0014_evidence")]

    operations = []
