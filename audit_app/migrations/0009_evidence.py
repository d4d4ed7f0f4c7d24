"""Evidence packs (issue 23). Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audit_app", "0008_member")]

    operations = []
