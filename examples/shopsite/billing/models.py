from django.db import models


class Invoice(models.Model):
    order = models.ForeignKey("orders.Order", on_delete=models.PROTECT, related_name="invoices")
    number = models.CharField(max_length=20, unique=True)
    issued = models.DateField()
    amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    paid = models.BooleanField(default=False)

    def __str__(self):
        return self.number


class Payment(models.Model):
    class Method(models.TextChoices):
        CARD = "card"
        TRANSFER = "transfer"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="payments")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    received = models.DateTimeField()
    method = models.CharField(max_length=16, choices=Method.choices, default=Method.CARD)
    reference = models.CharField(max_length=64, blank=True, default="", db_index=True)

    def __str__(self):
        return f"{self.method} {self.amount}"
