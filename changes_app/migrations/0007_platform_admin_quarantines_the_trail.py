"""The trail's quarantine arrived after the roles: platform admins may quarantine foreign rows.

Only this permission is added, and only to the Platform admin group if it exists.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations


def grant(apps, schema_editor):
    using = schema_editor.connection.alias
    # Permissions are otherwise created after the last migration (post_migrate).
    create_permissions(global_apps.get_app_config("audit_app"), verbosity=0, apps=apps, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.using(using).filter(name="Platform admin").first()
    if group is not None:
        group.permissions.add(*Permission.objects.using(using).filter(content_type__app_label="audit_app", codename="add_quarantinedentry"))


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0006_roles_see_and_acknowledge_drift"), ("audit_app", "0006_quarantined_entry")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
