"""The WSGI application (gunicorn serves it). Gunicorn runs no system checks, so the production
refusals (changes_app/checks.py) are run here: an unsafe production setting stops the server from
starting instead of serving the admin."""

import os

from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
application = get_wsgi_application()

_refusals = [message for message in run_checks(tags=["flamingock_production"]) if message.is_serious()]
if _refusals:
    raise ImproperlyConfigured("refusing to serve in production mode:\n" + "\n".join(str(message) for message in _refusals))
