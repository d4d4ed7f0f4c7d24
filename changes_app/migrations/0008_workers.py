"""Workers publish their pipeline digest with their heartbeat (docs/semantics.md, Workers)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0007_platform_admin_quarantines_the_trail")]

    operations = []
