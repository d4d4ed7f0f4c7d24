from django.db import migrations

#: The house brand every product without one belongs to.
HOUSE_BRANDS = ["Generic", "Shopsite Basics"]


def seed_brands(apps, schema_editor):
    Brand = apps.get_model("catalog", "Brand")
    Product = apps.get_model("catalog", "Product")
    db = schema_editor.connection.alias
    for name in HOUSE_BRANDS:
        Brand.objects.using(db).get_or_create(name=name)
    generic = Brand.objects.using(db).get(name="Generic")
    Product.objects.using(db).filter(brand__isnull=True).update(brand=generic)


def unseed_brands(apps, schema_editor):
    Brand = apps.get_model("catalog", "Brand")
    Brand.objects.using(schema_editor.connection.alias).filter(name__in=HOUSE_BRANDS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0006_product_brand"),
    ]

    operations = [
        migrations.RunPython(seed_brands, unseed_brands),
    ]
