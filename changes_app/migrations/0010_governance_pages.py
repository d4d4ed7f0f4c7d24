"""The admin as a governance product: stored change sources, declared environments, verify_chain (issue 18)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0009_sso_and_token_lifetime")]

    operations = []
