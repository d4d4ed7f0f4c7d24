from django.db import migrations
from django.db.models import OuterRef, Subquery


def backfill_unit_prices(apps, schema_editor):
    """Lines written before prices were kept on the line take the product's current price."""
    OrderLine = apps.get_model("orders", "OrderLine")
    Product = apps.get_model("catalog", "Product")
    price = Product.objects.filter(pk=OuterRef("product_id")).values("price")[:1]
    OrderLine.objects.using(schema_editor.connection.alias).filter(unit_price=0).update(unit_price=Subquery(price))


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0006_orderline_unit_price"),
    ]

    operations = [
        migrations.RunPython(backfill_unit_prices, migrations.RunPython.noop),
    ]
