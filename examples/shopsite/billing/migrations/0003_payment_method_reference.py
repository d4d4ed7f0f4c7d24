from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_payment"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="method",
            field=models.CharField(choices=[("card", "Card"), ("transfer", "Transfer")], default="card", max_length=16),
        ),
        migrations.AddField(
            model_name="payment",
            name="reference",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
