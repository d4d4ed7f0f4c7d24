"""The billing database of the shop, in MariaDB: schema changes and a backfill."""
