"""Single sign-on and personal API tokens' maximum lifetime (docs/sso.md)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0008_workers")]

    operations = []
