from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0002_product_price"),
        ("orders", "0005_order_note"),
    ]

    operations = [
        migrations.AddField(
            model_name="orderline",
            name="unit_price",
            field=models.DecimalField(decimal_places=2, default=0, max_digits=10),
        ),
    ]
