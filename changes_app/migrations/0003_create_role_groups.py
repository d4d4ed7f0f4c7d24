"""The four roles of docs/semantics.md §9 as groups with their model permissions (changes_app.governance.roles)."""

from django.db import migrations


def create_role_groups(apps, schema_editor):
    from changes_app.governance.roles import roles_ensure

    roles_ensure(apps=apps, using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("audit_app", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        ("changes_app", "0002_approval_policies_requests_and_approvals"),
    ]

    operations = [migrations.RunPython(create_role_groups, migrations.RunPython.noop)]
