"""The drift findings arrived after the roles: give the roles their permissions on them.

Compliance officers and platform admins see findings and webhook deliveries; engineers see
findings; engineers and platform admins may acknowledge or resolve them. Only these permissions
are added, and only to the role groups that exist: nothing else of a group is touched.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "Compliance officer": ("view_finding", "view_webhookdelivery"),
    "Platform admin": ("view_finding", "view_webhookdelivery", "acknowledge_finding"),
    "Engineer": ("view_finding", "acknowledge_finding"),
}


def grant(apps, schema_editor):
    using = schema_editor.connection.alias
    # Permissions are otherwise created after the last migration (post_migrate).
    create_permissions(global_apps.get_app_config("changes_app"), verbosity=0, apps=apps, using=using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group = Group.objects.using(using).filter(name=name).first()
        if group is not None:
            group.permissions.add(*Permission.objects.using(using).filter(content_type__app_label="changes_app", codename__in=codenames))


class Migration(migrations.Migration):
    dependencies = [("changes_app", "0005_api_idempotency_keys"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
