from changes_app.definitions import Change


class BackfillCustomerStatus(Change):
    """Every existing customer becomes active; a data change in the same transaction as its audit."""

    id = "shop-backfill-customer-status"
    author = "shop-team"
    target = "app-db"

    def apply(self, cursor, context):
        cursor.execute("UPDATE shop_customer SET status = 'active' WHERE status IS NULL")
        context.log.info("backfilled %s customers", cursor.rowcount)

    def rollback(self, cursor):
        cursor.execute("UPDATE shop_customer SET status = NULL WHERE status = 'active'")

    def verify(self, cursor) -> bool:
        cursor.execute("SELECT count(*) FROM shop_customer WHERE status IS NULL")
        return cursor.fetchone()[0] == 0
