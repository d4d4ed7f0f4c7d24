from changes_app.definitions import Change


class BackfillInvoiceCurrency(Change):
    """Existing invoices were all in euros: a data change, transactional with its marker row."""

    id = "billing-backfill-invoice-currency"
    author = "billing-team"
    target = "billing-db"

    def apply(self, cursor, context):
        cursor.execute("UPDATE billing_invoice SET currency = 'EUR' WHERE currency IS NULL")
        context.log.info("backfilled the currency of %s invoices", cursor.rowcount)

    def rollback(self, cursor):
        cursor.execute("UPDATE billing_invoice SET currency = NULL WHERE currency = 'EUR'")

    def verify(self, cursor) -> bool:
        cursor.execute("SELECT count(*) FROM billing_invoice WHERE currency IS NULL")
        return cursor.fetchone()[0] == 0
