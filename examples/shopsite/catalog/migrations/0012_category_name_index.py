from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0011_brand_country"),
    ]

    operations = [
        # A plain index by SQL, as a DBA would write it; the reverse drops it (same text on every engine).
        migrations.RunSQL(
            sql="CREATE INDEX catalog_category_name_lookup ON catalog_category (name)",
            reverse_sql="DROP INDEX catalog_category_name_lookup",
        ),
    ]
