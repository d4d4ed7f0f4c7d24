"""Break-glass (issue 23): the permission, the REVIEW request kind. Reserved slot."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0012_django_migrations")]

    operations = []
