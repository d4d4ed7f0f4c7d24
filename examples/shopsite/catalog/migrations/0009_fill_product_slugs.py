from django.db import migrations
from django.utils.text import slugify


def fill_slugs(apps, schema_editor):
    Product = apps.get_model("catalog", "Product")
    for product in Product.objects.using(schema_editor.connection.alias).filter(slug=""):
        product.slug = f"{slugify(product.name)}-{product.pk}"
        product.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0008_product_slug"),
    ]

    operations = [
        # No reverse: the slugs people bookmarked cannot be told from generated ones (irreversible).
        migrations.RunPython(fill_slugs),
    ]
