# Not atomic (atomic=False): the backfill commits in batches, so a large table is never locked in one
# transaction. A failure half-way leaves the batches already written (non-transactional).

from django.db import migrations

#: Rows per batch, each its own transaction.
BATCH = 500


def backfill_references(apps, schema_editor):
    Payment = apps.get_model("billing", "Payment")
    db = schema_editor.connection.alias
    while True:
        batch = list(Payment.objects.using(db).filter(reference="").values_list("pk", flat=True)[:BATCH])
        if not batch:
            return
        for pk in batch:
            Payment.objects.using(db).filter(pk=pk).update(reference=f"legacy-{pk}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0003_payment_method_reference"),
    ]

    operations = [
        migrations.RunPython(backfill_references, migrations.RunPython.noop),
    ]
