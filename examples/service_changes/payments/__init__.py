"""The payment provider of the shop, a SaaS API: its webhook registration."""
