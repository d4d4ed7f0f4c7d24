from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0008_order_shipping_address"),
    ]

    operations = [
        # Two migrations depend on this one: orders.0010_order_status_total_index and
        # billing.0005_invoice_amount (an undo of this one cascades over both).
        migrations.AddField(
            model_name="order",
            name="total",
            field=models.DecimalField(decimal_places=2, default=0, max_digits=12),
        ),
    ]
