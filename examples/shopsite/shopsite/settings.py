"""shopsite: an independent Django project (a small shop) that installs Flamingock the documented way
(docs/install.md). Its own apps are catalog, orders and billing; the product's are changes_app and
audit_app, installed from the package.

The database is ``DATABASE_URL`` (PostgreSQL, MySQL/MariaDB or SQLite, read by dj-database-url as
the reference site reads it), else SQLite in ``SHOPSITE_VAR_DIR`` (default ``./var``).
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SHOPSITE_VAR_DIR", BASE_DIR / "var"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "shopsite-insecure-development-key"
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # shopsite's own apps
    "catalog",
    "orders",
    "billing",
    # --- Flamingock (docs/install.md, step 2): the apps it needs, then its own two, then the admin
    # with the product's site as the default one (after changes_app, whose admin templates win).
    "guardian",
    "django_celery_beat",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "health_check",
    "django_prometheus",
    "audit_app.apps.AuditAppConfig",
    "changes_app.apps.ChangesAppConfig",
    "changes_app.apps.FlamingockAdminConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Flamingock: who changes group memberships and permissions, for their audit entries.
    "changes_app.governance.permission_audit.ActingUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shopsite.urls"
WSGI_APPLICATION = "shopsite.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # Flamingock: "Sign in with SSO" on the admin's login page.
                "changes_app.governance.logins.sso_context",
            ],
        },
    },
]


def _database() -> dict:
    url = os.environ.get("DATABASE_URL")
    if url:
        config = dj_database_url.parse(url)
        config["TEST"] = {"NAME": os.environ.get("SHOPSITE_TEST_DB_NAME") or None}
        return config
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "shopsite.sqlite3"), "OPTIONS": {"timeout": 30}}


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

AUTHENTICATION_BACKENDS = [
    "changes_app.governance.logins.LocalPasswordBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None
LOGIN_REDIRECT_URL = "/ops/admin/"
CELERY_BROKER_URL = os.environ.get("REDIS_URL") or "memory://"
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULER = "changes_app.celery_hooks:CheckedDatabaseScheduler"

# --- Flamingock: the settings block (docs/install.md, step 3). Every value is the default. ---
#: The deployment this instance governs, and those where every governed action needs approval.
FLAMINGOCK_ENVIRONMENT = os.environ.get("FLAMINGOCK_ENVIRONMENT", "dev")
FLAMINGOCK_PROTECTED_ENVIRONMENTS = ["prod", "production"]
FLAMINGOCK_ENVIRONMENTS = ["dev", "staging", "prod"]
#: Production mode: the apps' system checks refuse unsafe settings (flamingock.E101 to E105).
FLAMINGOCK_PRODUCTION = FLAMINGOCK_ENVIRONMENT in FLAMINGOCK_PROTECTED_ENVIRONMENTS
FLAMINGOCK_CLI = os.environ.get("FLAMINGOCK_CLI") == "1"
FLAMINGOCK_VAR_DIR = VAR_DIR
#: Django migrations governed as changes (docs/django-migrations.md): this project's three apps.
FLAMINGOCK_DJANGO_MIGRATIONS = ["catalog", "orders", "billing"]
FLAMINGOCK_STAGES = []
FLAMINGOCK_DISCOVER_APPS = True
FLAMINGOCK_OUT_OF_ORDER = "block"
FLAMINGOCK_TARGET_SYSTEMS = {"app-db": {"kind": "django", "alias": "default", "description": "The shop's database"}}
FLAMINGOCK_LOCK = {"backend": "", "lease_seconds": 60.0, "wait_seconds": 10.0}
FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = 180.0
FLAMINGOCK_RUN_QUEUED_TIMEOUT = 300.0
FLAMINGOCK_REQUEST_EXPIRY_HOURS = 72.0
FLAMINGOCK_BASE_URL = os.environ.get("FLAMINGOCK_BASE_URL", "http://127.0.0.1:8000/ops")
FLAMINGOCK_WEBHOOK_URLS = []
FLAMINGOCK_DRIFT_PROBE_TIMEOUT = 30.0
FLAMINGOCK_OIDC_ISSUER = ""
FLAMINGOCK_CELERY_APP = "shopsite.celery.app"
REDIS_URL = os.environ.get("REDIS_URL", "")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "changes_app.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["changes_app.api.parsers.LimitedJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "changes_app.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "changes_app.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Flamingock API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["changes_app.api.permissions.MayReadSchema"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# --- end of the Flamingock block ---
