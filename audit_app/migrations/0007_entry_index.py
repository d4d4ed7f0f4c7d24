"""The rebuildable side index that maps every audit entry to its target and change (issue 18)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0006_quarantined_entry")]

    operations = []
