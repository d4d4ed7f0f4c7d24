import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("orders", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Invoice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("number", models.CharField(max_length=20, unique=True)),
                ("issued", models.DateField()),
                ("order", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="invoices", to="orders.order")),
            ],
        ),
    ]
