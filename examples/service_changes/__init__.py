"""The example shop service beyond its own database: one stage per target system.

Each stage is registered in settings (``FLAMINGOCK_STAGES``) and its target system is enabled only
when the environment names it (REDIS_URL, FLAMINGOCK_RABBITMQ_URL, FLAMINGOCK_MARIADB_URL,
FLAMINGOCK_SAAS_URL): elsewhere discovery leaves the stage out and ``plan``/``run`` say so.
"""
