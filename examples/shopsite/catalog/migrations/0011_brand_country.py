from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0010_product_slug_unique"),
    ]

    operations = [
        migrations.AddField(
            model_name="brand",
            name="country",
            field=models.CharField(blank=True, default="", max_length=2),
        ),
    ]
