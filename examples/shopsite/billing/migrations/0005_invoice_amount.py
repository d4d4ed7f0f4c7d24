from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_backfill_payment_references"),
        ("orders", "0009_order_total"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="amount",
            field=models.DecimalField(decimal_places=2, default=0, max_digits=12),
        ),
    ]
