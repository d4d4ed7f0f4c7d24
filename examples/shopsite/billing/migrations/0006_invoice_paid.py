from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_invoice_amount"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="paid",
            field=models.BooleanField(default=False),
        ),
    ]
