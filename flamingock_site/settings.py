"""Settings, read once from the environment.

With no environment at all the product runs on an embedded default (SQLite in WAL mode, a database
lease lock) so that a newcomer can try it anywhere. ``DATABASE_URL`` switches the audit store to
PostgreSQL, ``REDIS_URL`` switches the lock and the broker to Redis.
"""

import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLAMINGOCK_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


#: The deployment this instance governs.
FLAMINGOCK_ENVIRONMENT = os.environ.get("FLAMINGOCK_ENVIRONMENT", "dev")
#: Environments where every governed action needs approval and the CLI needs a token.
FLAMINGOCK_PROTECTED_ENVIRONMENTS = env_list("FLAMINGOCK_PROTECTED_ENVIRONMENTS", "prod,production")
#: The environments approval policies may name (the policy form offers them; the service refuses
#: any other), besides FLAMINGOCK_ENVIRONMENT, which is always declared.
FLAMINGOCK_ENVIRONMENTS = env_list("FLAMINGOCK_ENVIRONMENTS", "dev,staging,prod")
#: Production mode (docs/operators.md, "Production checklist"): a protected environment always runs
#: in it, and FLAMINGOCK_PRODUCTION=1 turns it on for any other. Its transport defaults are secure
#: (below; variables only relax them) and the apps' system checks refuse an unsafe setting
#: (changes_app/checks.py: the built-in or a weak key, DEBUG, open ALLOWED_HOSTS, no audit signing
#: key, the demo). Without it nothing changes for the embedded demo.
FLAMINGOCK_PRODUCTION = FLAMINGOCK_ENVIRONMENT in FLAMINGOCK_PROTECTED_ENVIRONMENTS or env_bool("FLAMINGOCK_PRODUCTION")
#: The embedded demo: the example app and the example service's stages and target systems. Only
#: with an explicit FLAMINGOCK_DEMO=1 (./bin/run sets it); production mode refuses it (flamingock.E105).
FLAMINGOCK_DEMO = env_bool("FLAMINGOCK_DEMO", default=False)

#: The development key of a checkout; production mode refuses it (flamingock.E101), so an empty or
#: missing DJANGO_SECRET_KEY cannot go unnoticed there.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"
DEBUG = env_bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

if FLAMINGOCK_PRODUCTION:
    # Served over HTTPS only, behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips
    # it from clients). Each variable relaxes one default; `check --deploy` then warns about it.
    SECURE_HSTS_SECONDS = int(os.environ.get("FLAMINGOCK_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("FLAMINGOCK_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env_bool("FLAMINGOCK_HSTS_PRELOAD", default=True)
    SECURE_SSL_REDIRECT = env_bool("FLAMINGOCK_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("FLAMINGOCK_PROXY_SSL_HEADER", default=True) else None
    #: Health probes of a load balancer often speak plain HTTP: they are not redirected.
    SECURE_REDIRECT_EXEMPT = [r"^health/"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("FLAMINGOCK_SECURE_COOKIES", default=True)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guardian",
    "django_celery_beat",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # /health/ (its page template) and /metrics (HTTP and database metrics): changes_app/observability.
    "health_check",
    "django_prometheus",
    "audit_app.apps.AuditAppConfig",
    "changes_app.apps.ChangesAppConfig",
    # Django's admin without autodiscovery at start-up (flamingock_site/urls.py discovers the other
    # apps' admin modules), with the product's own site as the default one. After changes_app, whose
    # templates (admin/base_site.html, index, login) must come first (docs/install.md).
    "flamingock_site.admin_apps.FlamingockAdminConfig",
    "examples.apps.ExamplesConfig",
]
if not FLAMINGOCK_DEMO:
    INSTALLED_APPS.remove("examples.apps.ExamplesConfig")
#: ``manage.py flamingock`` (the command line) sets FLAMINGOCK_CLI: it reads and writes the ledger and
#: never the periodic tasks, so it starts without django-celery-beat, whose models import Celery and
#: load every time zone (0.19 s of a 0.48 s start-up; docs/decisions.md, "A lean command line").
FLAMINGOCK_CLI = env_bool("FLAMINGOCK_CLI")
if FLAMINGOCK_CLI:
    INSTALLED_APPS.remove("django_celery_beat")
    # Nor does it serve /health/ or /metrics (its runs are counted from their rows all the same).
    INSTALLED_APPS.remove("health_check")
    INSTALLED_APPS.remove("django_prometheus")

MIDDLEWARE = [
    # First and last: django-prometheus times every request and counts its response.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who changes group memberships and permissions, for their audit entries.
    "changes_app.governance.permission_audit.ActingUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
if FLAMINGOCK_PRODUCTION:
    # gunicorn serves the static files itself, compressed and cached far ahead (STORAGES below).
    MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "flamingock_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The templates live in the apps (changes_app/templates, audit_app/templates).
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # "Sign in with SSO" on the admin's login page (docs/sso.md).
                "changes_app.governance.logins.sso_context",
            ],
        },
    },
]

WSGI_APPLICATION = "flamingock_site.wsgi.application"


def _conn_max_age() -> int | None:
    value = os.environ.get("FLAMINGOCK_DB_CONN_MAX_AGE", "").strip().lower() or "60"
    if value in {"none", "unlimited"}:
        return None
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ImproperlyConfigured(f"FLAMINGOCK_DB_CONN_MAX_AGE must be a number of seconds (0 or more) or 'none', not {value!r}")
    return seconds


def _database_from_environment() -> dict:
    url = os.environ.get("DATABASE_URL")
    if url:
        # Persistent connections (docs/operators.md, "Serving the admin and the API"): a web or
        # worker process keeps its connection for FLAMINGOCK_DB_CONN_MAX_AGE seconds (default 60;
        # 0 closes it after every request, "none" never), so a request does not pay for a new
        # PostgreSQL session. The health check (FLAMINGOCK_DB_CONN_HEALTH_CHECKS, default on)
        # replaces a connection the server dropped before a request uses it.
        config = dj_database_url.parse(
            url, conn_max_age=_conn_max_age(), conn_health_checks=env_bool("FLAMINGOCK_DB_CONN_HEALTH_CHECKS", default=True)
        )
        if config["ENGINE"] == "django.db.backends.postgresql":
            # A paused lock holder must not block a takeover: the server ends a transaction left
            # idle for half a lease (docs/semantics.md §6); the engine sets the same on its runner connection.
            lease_ms = int(float(os.environ.get("FLAMINGOCK_LOCK_LEASE", "60")) * 500)
            config.setdefault("OPTIONS", {})["options"] = f"-c idle_in_transaction_session_timeout={lease_ms}"
            # Keep test databases of parallel runs apart.
            config["TEST"] = {"NAME": os.environ.get("FLAMINGOCK_TEST_DB_NAME") or None}
        return config
    path = Path(os.environ.get("FLAMINGOCK_SQLITE_PATH", VAR_DIR / "flamingock.sqlite3"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # WAL, immediate transactions and a busy timeout let web, worker and beat share one file
        # without "database is locked" (docs/semantics.md §6).
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": os.environ.get("FLAMINGOCK_TEST_DB_NAME") or str(VAR_DIR / f"test-{os.getpid()}.sqlite3")},
    }


DATABASES = {"default": _database_from_environment()}
if env_bool("FLAMINGOCK_DB_METRICS", default=True) and not FLAMINGOCK_CLI:
    # django-prometheus's wrappers of the same backends count connections, queries and their errors
    # for /metrics (docs/operators.md, "Health and metrics"). The command line is not scraped.
    DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace("django.db.backends.", "django_prometheus.db.backends.")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Signing in: single sign-on, local passwords, tokens (docs/sso.md) ---------------------------
#: OpenID Connect login for the admin (mozilla-django-oidc): on when FLAMINGOCK_OIDC_CLIENT_ID is set.
FLAMINGOCK_OIDC_ENABLED = bool(os.environ.get("FLAMINGOCK_OIDC_CLIENT_ID"))
#: The issuer names the provider's subjects: a person is (issuer, sub), never an e-mail address.
FLAMINGOCK_OIDC_ISSUER = os.environ.get("FLAMINGOCK_OIDC_ISSUER", "")
OIDC_RP_CLIENT_ID = os.environ.get("FLAMINGOCK_OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = os.environ.get("FLAMINGOCK_OIDC_CLIENT_SECRET", "")
OIDC_OP_AUTHORIZATION_ENDPOINT = os.environ.get("FLAMINGOCK_OIDC_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = os.environ.get("FLAMINGOCK_OIDC_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = os.environ.get("FLAMINGOCK_OIDC_USERINFO_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = os.environ.get("FLAMINGOCK_OIDC_JWKS_ENDPOINT", "")
OIDC_RP_SIGN_ALGO = os.environ.get("FLAMINGOCK_OIDC_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = os.environ.get("FLAMINGOCK_OIDC_SCOPES", "openid email profile")
OIDC_USE_PKCE = True
OIDC_AUTHENTICATE_CLASS = "changes_app.governance.logins.SsoLoginView"
OIDC_CALLBACK_CLASS = "changes_app.governance.logins.SsoCallbackView"
LOGIN_REDIRECT_URL = "/admin/"
LOGIN_REDIRECT_URL_FAILURE = "/admin/login/?sso=failed"
if FLAMINGOCK_OIDC_ENABLED:
    _missing = [
        name
        for name, value in (
            ("FLAMINGOCK_OIDC_ISSUER", FLAMINGOCK_OIDC_ISSUER),
            ("FLAMINGOCK_OIDC_CLIENT_SECRET", OIDC_RP_CLIENT_SECRET),
            ("FLAMINGOCK_OIDC_AUTHORIZATION_ENDPOINT", OIDC_OP_AUTHORIZATION_ENDPOINT),
            ("FLAMINGOCK_OIDC_TOKEN_ENDPOINT", OIDC_OP_TOKEN_ENDPOINT),
            ("FLAMINGOCK_OIDC_USERINFO_ENDPOINT", OIDC_OP_USER_ENDPOINT),
            ("FLAMINGOCK_OIDC_JWKS_ENDPOINT", OIDC_OP_JWKS_ENDPOINT),
        )
        if not value
    ]
    if _missing:
        raise ImproperlyConfigured(f"FLAMINGOCK_OIDC_CLIENT_ID is set, so single sign-on needs {', '.join(_missing)} (docs/sso.md)")
#: The claim holding the person's groups, and the claim that names their account here.
FLAMINGOCK_OIDC_GROUPS_CLAIM = os.environ.get("FLAMINGOCK_OIDC_GROUPS_CLAIM", "groups")
FLAMINGOCK_OIDC_USERNAME_CLAIM = os.environ.get("FLAMINGOCK_OIDC_USERNAME_CLAIM", "preferred_username")
#: Provider group -> role (a role group of changes_app/governance/roles.py), as a JSON object, e.g.
#: {"dba": "Approver", "dev": "Engineer"}. Re-applied at every SSO login; no mapped role, no login.
FLAMINGOCK_OIDC_ROLE_MAP = json.loads(os.environ.get("FLAMINGOCK_OIDC_ROLE_MAP") or "{}")
#: Local passwords: "on" (default), "emergency-only" (only FLAMINGOCK_EMERGENCY_USERS) or "off".
FLAMINGOCK_LOCAL_LOGIN = os.environ.get("FLAMINGOCK_LOCAL_LOGIN", "on").strip().lower()
if FLAMINGOCK_LOCAL_LOGIN not in {"on", "emergency-only", "off"}:
    raise ImproperlyConfigured(f"FLAMINGOCK_LOCAL_LOGIN must be on, emergency-only or off, not {FLAMINGOCK_LOCAL_LOGIN!r}")
FLAMINGOCK_EMERGENCY_USERS = env_list("FLAMINGOCK_EMERGENCY_USERS")
#: Days a personal API token may live at most; a token asked for without expiry gets this.
FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = float(os.environ.get("FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS", "90"))
#: Seconds of a refusal window (docs/governance.md, Refusals): the first refusal per (actor or
#: address, reason) is written, later ones counted, and the next window's first closes it.
FLAMINGOCK_REFUSAL_WINDOW = int(os.environ.get("FLAMINGOCK_REFUSAL_WINDOW", "600"))
#: Failed logins from one address in one refusal window before logins from it are refused.
FLAMINGOCK_LOGIN_FAILURE_LIMIT = int(os.environ.get("FLAMINGOCK_LOGIN_FAILURE_LIMIT", "10"))

AUTHENTICATION_BACKENDS = [
    # Passwords, as FLAMINGOCK_LOCAL_LOGIN allows, throttled; model permissions for everyone.
    "changes_app.governance.logins.LocalPasswordBackend",
    *(["changes_app.governance.sso.SsoBackend"] if FLAMINGOCK_OIDC_ENABLED else []),
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", VAR_DIR / "static"))
#: Production mode serves static files through whitenoise from ``collectstatic``'s output: compressed,
#: with hashed names cached for a year. Elsewhere (the demo, the tests) no collectstatic is needed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if FLAMINGOCK_PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "audit_app.redaction.RedactingFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"flamingock": {"handlers": ["console"], "level": os.environ.get("FLAMINGOCK_LOG_LEVEL", "INFO"), "propagate": False}},
}
#: ``json``: one JSON object a line (python-json-logger), through the same redaction (and more: the
#: formatter redacts extra fields and tracebacks too). ``text`` (the default): the message alone.
FLAMINGOCK_LOG_FORMAT = os.environ.get("FLAMINGOCK_LOG_FORMAT", "text").strip().lower()
if FLAMINGOCK_LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"FLAMINGOCK_LOG_FORMAT must be 'text' or 'json', not {FLAMINGOCK_LOG_FORMAT!r}")
if FLAMINGOCK_LOG_FORMAT == "json":
    LOGGING["formatters"] = {
        "json": {
            "()": "changes_app.observability.logs.RedactingJsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        }
    }
    LOGGING["handlers"]["console"]["formatter"] = "json"

#: Error reports to Sentry when SENTRY_DSN is set (web, workers and the command line), scrubbed by the
#: same redaction; no personal data (user, cookies, client address) is sent.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    from changes_app.observability.logs import sentry_before_send

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=FLAMINGOCK_ENVIRONMENT,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        # sentry-sdk 3 replaced send_default_pii with data_collection: no user, cookies, headers,
        # bodies, query strings, SQL parameters or local variables leave the process.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "off"}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "database_query_data": False,
            "stack_frame_variables": False,
        },
        traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0")),
        before_send=sentry_before_send,
    )

# --- Flamingock --------------------------------------------------------------------------------

#: FLAMINGOCK_ENVIRONMENT, FLAMINGOCK_PROTECTED_ENVIRONMENTS, FLAMINGOCK_PRODUCTION and
#: FLAMINGOCK_DEMO are set at the top: production mode decides the defaults of Django's settings.
#: Extra change packages, each a stage (``package`` or ``name=package``), run after the ``changes``
#: packages of installed apps.
FLAMINGOCK_STAGES = env_list(
    "FLAMINGOCK_STAGES",
    # The demo's: the example service's stages beyond its own database (examples/service_changes),
    # one per target system below; a stage whose system is disabled is left out, and plan/run say so.
    "feature-flags=examples.service_changes.feature_flags,order-events=examples.service_changes.order_events,"
    "billing=examples.service_changes.billing,payments=examples.service_changes.payments"
    if FLAMINGOCK_DEMO
    else "",
)
#: Whether the ``changes`` package of every installed app is a stage.
FLAMINGOCK_DISCOVER_APPS = env_bool("FLAMINGOCK_DISCOVER_APPS", default=True)
#: ``block`` (default) or ``allow`` a new change ordered before an applied one.
FLAMINGOCK_OUT_OF_ORDER = os.environ.get("FLAMINGOCK_OUT_OF_ORDER", "block")
#: PostgreSQL: the audit writer's one statement is prepared once per connection. Set to 0 behind a
#: connection pooler in transaction mode that cannot carry prepared statements (docs/operators.md).
FLAMINGOCK_DB_PREPARED_STATEMENTS = env_bool("FLAMINGOCK_DB_PREPARED_STATEMENTS", default=True)
#: Named target systems. Connection settings only: what is governed lives in the database.
#: ``FLAMINGOCK_TARGETS_JSON`` (a JSON object of the same shape) replaces the default.
FLAMINGOCK_TARGET_SYSTEMS = {
    "app-db": {"kind": "django", "alias": "default", "description": "The application's own database"},
    # The example service's other systems, each enabled only when its environment variable is set,
    # so that the embedded demo runs anywhere (docs/targets-beyond-sql.md, "Disabled target systems").
    "feature-flags": {"kind": "redis", "url_env": "REDIS_URL", "enabled": bool(os.environ.get("REDIS_URL")), "description": "Feature flags"},
    "event-bus": {
        "kind": "rabbitmq",
        "url_env": "FLAMINGOCK_RABBITMQ_URL",
        "enabled": bool(os.environ.get("FLAMINGOCK_RABBITMQ_URL")),
        "description": "The message broker",
    },
    "billing-db": {
        "kind": "mysql",
        "url_env": "FLAMINGOCK_MARIADB_URL",
        "enabled": bool(os.environ.get("FLAMINGOCK_MARIADB_URL")),
        "description": "The billing database (MariaDB)",
    },
    "payments-api": {
        "kind": "http",
        "base_url_env": "FLAMINGOCK_SAAS_URL",
        "token_env": "FLAMINGOCK_SAAS_TOKEN",
        "enabled": bool(os.environ.get("FLAMINGOCK_SAAS_URL")),
        "description": "The payment provider's API (examples/demo_saas.py in the demo)",
    },
}
if not FLAMINGOCK_DEMO:
    FLAMINGOCK_TARGET_SYSTEMS = {"app-db": FLAMINGOCK_TARGET_SYSTEMS["app-db"]}
if os.environ.get("FLAMINGOCK_TARGETS_JSON"):
    import json

    FLAMINGOCK_TARGET_SYSTEMS = json.loads(os.environ["FLAMINGOCK_TARGETS_JSON"])
#: The pipeline lock: lease and bounded wait, in seconds.
#: ``backend``: "redis" (the default when REDIS_URL is set), "database" (the embedded default), or
#: the dotted path of a class honouring the same contract.
FLAMINGOCK_LOCK = {
    "backend": os.environ.get("FLAMINGOCK_LOCK_BACKEND", ""),
    "lease_seconds": float(os.environ.get("FLAMINGOCK_LOCK_LEASE", "60")),
    "wait_seconds": float(os.environ.get("FLAMINGOCK_LOCK_WAIT", "10")),
}
#: Secret values that the audit writer redacts wherever they appear, by environment variable name.
FLAMINGOCK_SECRET_ENV_VARS = env_list("FLAMINGOCK_SECRET_ENV_VARS")
#: Hours a request stays open, and an approved APPLY request covers its change, before it expires.
FLAMINGOCK_REQUEST_EXPIRY_HOURS = float(os.environ.get("FLAMINGOCK_REQUEST_EXPIRY_HOURS", "72"))
#: Hours two reviewers have to approve a break-glass use before it is overdue (docs/break-glass.md).
FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS = float(os.environ.get("FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS", "72"))
#: Evidence packs (docs/compliance.md, "Evidence packs"): where the zip files are kept (download only
#: through the permission-checked admin page and API), and the hours within which a drift finding
#: must be acknowledged for the pack's control to pass.
FLAMINGOCK_EVIDENCE_DIR = Path(os.environ.get("FLAMINGOCK_EVIDENCE_DIR", VAR_DIR / "evidence"))
FLAMINGOCK_EVIDENCE_DRIFT_ACK_HOURS = float(os.environ.get("FLAMINGOCK_EVIDENCE_DRIFT_ACK_HOURS", "24"))
#: Where people reach the admin: the links of notification e-mails.
FLAMINGOCK_BASE_URL = os.environ.get("FLAMINGOCK_BASE_URL", "http://127.0.0.1:8000")
#: Webhooks told of new and reopened drift findings (comma-separated URLs); each request is signed
#: with HMAC-SHA256 of the body under the FLAMINGOCK_WEBHOOK_SECRET environment variable.
FLAMINGOCK_WEBHOOK_URLS = env_list("FLAMINGOCK_WEBHOOK_URLS")
#: Seconds one live drift probe (a change's verify) may take before it counts as a failed probe.
FLAMINGOCK_DRIFT_PROBE_TIMEOUT = float(os.environ.get("FLAMINGOCK_DRIFT_PROBE_TIMEOUT", "30"))
#: The Celery app that services queue tasks on, by name (a host project names its own).
FLAMINGOCK_CELERY_APP = "flamingock_site.celery.app"

# --- REST API (/api/v1/) -------------------------------------------------------------------------
#: Input limits of the API (docs/api.md, Limits): a larger body is 413 ``payload_too_large``, deeper
#: JSON 400 ``payload_too_deep``. Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB) stays the outer bound.
FLAMINGOCK_API_MAX_BODY_BYTES = int(os.environ.get("FLAMINGOCK_API_MAX_BODY_BYTES", str(1024 * 1024)))
FLAMINGOCK_API_MAX_JSON_DEPTH = int(os.environ.get("FLAMINGOCK_API_MAX_JSON_DEPTH", "32"))
#: Largest change file (YAML or Python) discovery reads (docs/writing-changes.md, Limits).
FLAMINGOCK_MAX_CHANGE_BYTES = int(os.environ.get("FLAMINGOCK_MAX_CHANGE_BYTES", str(256 * 1024)))
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
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle", "rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("FLAMINGOCK_API_THROTTLE_ANON", "60/min"),
        "user": os.environ.get("FLAMINGOCK_API_THROTTLE_USER", "6000/min"),
    },
    #: Proxies in front whose X-Forwarded-For names the client the throttles count. 0 (the default)
    #: trusts no such header: a client could otherwise name a new address per request.
    "NUM_PROXIES": int(os.environ.get("FLAMINGOCK_API_NUM_PROXIES", "0")),
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Flamingock API",
    "DESCRIPTION": 'Change-as-code governance: target systems, changes, plans, runs, requests and approvals, issues, the audit trail and the pipeline lock. Errors always have the shape {"error": {"code", "message", "details"}} with a stable code.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and Swagger UI: anyone outside production mode, a logged-in user in it.
    "SERVE_PERMISSIONS": ["changes_app.api.permissions.MayReadSchema"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ChangeStateEnum": "audit_app.models.ChangeStateName",
        "RunKindEnum": "changes_app.models.Run.Kind",
        "RunStatusEnum": "changes_app.models.Run.Status",
        "RequestKindEnum": "changes_app.models.ChangeRequest.Kind",
        "RequestStatusEnum": "changes_app.models.ChangeRequest.Status",
    },
}

# Notifications go through Django's mail; the embedded default prints them (console backend).
EMAIL_BACKEND = os.environ.get("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("DJANGO_EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("DJANGO_EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("DJANGO_EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("DJANGO_EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "flamingock@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
#: Who gets the alerts (a broken audit chain): "Name <email>, Other <email>".
ADMINS = [(entry.split("<")[0].strip(), entry.split("<")[-1].rstrip(">").strip()) for entry in env_list("DJANGO_ADMINS")]

#: Public keys (hex) that audit checkpoints may be signed with besides the configured signing key:
#: earlier keys after a rotation, or the keys a verifier without the private key trusts.
FLAMINGOCK_AUDIT_PUBLIC_KEYS = env_list("FLAMINGOCK_AUDIT_PUBLIC_KEYS")

REDIS_URL = os.environ.get("REDIS_URL", "")

#: The cache holds the API's throttle counts, cached sessions and the health probe's key. On Redis
#: when REDIS_URL is set, so every process shares them (FLAMINGOCK_CACHE_URL names another Redis);
#: otherwise each process has its own memory, which is right for one process only.
FLAMINGOCK_CACHE_URL = os.environ.get("FLAMINGOCK_CACHE_URL", "") or REDIS_URL
if FLAMINGOCK_CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": FLAMINGOCK_CACHE_URL,
            # Keeps deployments (or test runs) sharing one Redis apart.
            "KEY_PREFIX": os.environ.get("FLAMINGOCK_CACHE_KEY_PREFIX", "flamingock"),
            # A Redis that stopped answering fails a request (and readiness) in seconds, not minutes.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "flamingock"}}
#: Sessions read from the cache and kept in the database: Redis here persists nothing to disk.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# --- Health and metrics (changes_app/observability, docs/operators.md "Health and metrics") ------
#: /metrics answers a caller with this bearer token, or from an address of the allow-list (IPs or
#: networks). With neither, production mode answers 404 and elsewhere only loopback callers.
FLAMINGOCK_METRICS_TOKEN = os.environ.get("FLAMINGOCK_METRICS_TOKEN", "")
FLAMINGOCK_METRICS_ALLOWED_IPS = env_list("FLAMINGOCK_METRICS_ALLOWED_IPS")
#: Seconds after which /health/detail/ reports the last chain verification as too old.
FLAMINGOCK_HEALTH_VERIFICATION_MAX_AGE = float(os.environ.get("FLAMINGOCK_HEALTH_VERIFICATION_MAX_AGE", str(26 * 3600)))

# --- Celery ------------------------------------------------------------------------------------
# A run is one task; its heartbeat, not a time limit, keeps it alive. The hard limit is far above
# the longest expected run and the broker's visibility timeout is above that, so a slow run is
# never redelivered while it is still running.
FLAMINGOCK_RUN_TIME_LIMIT = int(os.environ.get("FLAMINGOCK_RUN_TIME_LIMIT", str(6 * 3600)))
#: Seconds a run may go without a heartbeat before the reaper declares its worker dead.
FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = float(os.environ.get("FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT", str(3 * FLAMINGOCK_LOCK["lease_seconds"])))
#: Seconds a run may stay QUEUED before the reaper queues it again (at most 3 times), then aborts it.
FLAMINGOCK_RUN_QUEUED_TIMEOUT = float(os.environ.get("FLAMINGOCK_RUN_QUEUED_TIMEOUT", "300"))
#: Workers (docs/semantics.md, Workers; docs/reliability.md, "Workers know their code"): how often a
#: worker publishes its heartbeat with its pipeline digest, how long after its last one it still
#: counts as live, and how often (and how far apart) a worker on other code hands a task back
#: before the run ends ``no_current_worker``. FLAMINGOCK_VERSION names the deployed release.
FLAMINGOCK_WORKER_HEARTBEAT_SECONDS = float(os.environ.get("FLAMINGOCK_WORKER_HEARTBEAT_SECONDS", "10"))
FLAMINGOCK_WORKER_LIVE_SECONDS = float(os.environ.get("FLAMINGOCK_WORKER_LIVE_SECONDS", str(3 * FLAMINGOCK_WORKER_HEARTBEAT_SECONDS)))
FLAMINGOCK_WORKER_HANDBACKS = int(os.environ.get("FLAMINGOCK_WORKER_HANDBACKS", "5"))
FLAMINGOCK_WORKER_HANDBACK_COUNTDOWN = float(os.environ.get("FLAMINGOCK_WORKER_HANDBACK_COUNTDOWN", "10"))
FLAMINGOCK_VERSION = os.environ.get("FLAMINGOCK_VERSION", "")

#: Seconds the broker waits before delivering an unacknowledged task again: always above the time limit.
FLAMINGOCK_BROKER_VISIBILITY_TIMEOUT = FLAMINGOCK_RUN_TIME_LIMIT + int(os.environ.get("FLAMINGOCK_BROKER_VISIBILITY_MARGIN", "3600"))

BROKER_DIR = VAR_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # FLAMINGOCK_BROKER_KEYPREFIX keeps deployments (or test runs) sharing one Redis apart.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": FLAMINGOCK_BROKER_VISIBILITY_TIMEOUT,
        "global_keyprefix": os.environ.get("FLAMINGOCK_BROKER_KEYPREFIX", ""),
    }
else:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
#: One queue per environment when several share a broker.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("FLAMINGOCK_QUEUE", "celery")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = FLAMINGOCK_RUN_TIME_LIMIT
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "flamingock_site.beat:CheckedDatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
#: Tests that exercise a service's own logic may set this; worker tests never do.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
