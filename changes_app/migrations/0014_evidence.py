"""Evidence packs (issue 23). Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0013_break_glass")]

    operations = []
