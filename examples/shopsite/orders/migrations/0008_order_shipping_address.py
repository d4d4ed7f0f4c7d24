from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0007_backfill_unit_prices"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="shipping_address",
            field=models.TextField(blank=True, default=""),
        ),
    ]
