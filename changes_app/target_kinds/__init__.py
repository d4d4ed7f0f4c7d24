"""Target system kinds beyond the SQL databases: Redis, HTTP/SaaS APIs, RabbitMQ and MySQL/MariaDB.

Importing this package registers each kind (:func:`~changes_app.targets.register_target_kind`) and
its YAML template (:func:`~changes_app.change_templates.register_template`); ``AppConfig.ready``
does it. docs/targets-beyond-sql.md describes the settings and the templates of each kind.
"""

from . import http, mysql, rabbitmq, redis  # noqa: F401  (each module registers its kind and template)
