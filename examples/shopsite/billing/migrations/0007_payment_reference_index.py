from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_invoice_paid"),
    ]

    operations = [
        migrations.AlterField(
            model_name="payment",
            name="reference",
            field=models.CharField(blank=True, db_index=True, default="", max_length=64),
        ),
    ]
