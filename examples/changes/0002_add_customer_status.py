from changes_app.definitions import Change


class AddCustomerStatus(Change):
    """A status column on customers, for the account lifecycle."""

    id = "shop-add-customer-status"
    author = "shop-team"
    target = "app-db"

    def apply(self, cursor):
        cursor.execute("ALTER TABLE shop_customer ADD COLUMN status varchar(16)")

    def rollback(self, cursor):
        cursor.execute("ALTER TABLE shop_customer DROP COLUMN status")

    def verify(self, cursor, connection) -> bool:
        columns = connection.introspection.get_table_description(cursor, "shop_customer")
        return any(column.name == "status" for column in columns)
