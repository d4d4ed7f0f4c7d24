"""The order events topology of the shop, in RabbitMQ."""
