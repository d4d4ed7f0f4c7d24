"""Feature flags and checkout configuration of the shop, in Redis."""
