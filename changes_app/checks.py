"""Django system checks: every pipeline problem at startup, with file and line; and, in production
mode, the refusals of unsafe settings (docs/operators.md, "Production checklist").

The refusals are Error-level checks of the app, not deploy checks, so that plain ``check``, every
management command and a host project that installs the apps get them too; ``manage.py flamingock``
(which skips the system checks) runs them by their tag, :data:`PRODUCTION_TAG`. They read settings
when they run, never at import.
"""

import os

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from changes_app.pipeline.discovery import pipeline_discover

#: The tag of the production-mode refusals (``run_checks(tags=[PRODUCTION_TAG])``).
PRODUCTION_TAG = "flamingock_production"
#: Keys that ship with the code: refused in production mode whatever their length.
BUILT_IN_SECRET_KEYS = frozenset({"insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"})
#: Django's judgement of a strong key (its security.W009).
SECRET_KEY_MIN_LENGTH, SECRET_KEY_MIN_UNIQUE_CHARACTERS = 50, 5
#: What loads the configured audit signing key (and raises when it cannot).
SIGNING_KEY = "audit_app.signing.signing_key"
CHECKLIST = 'docs/operators.md, "Production checklist"'


@register(Tags.compatibility, "flamingock")
def pipeline_check(app_configs=None, **kwargs):
    return [
        Error(str(problem), hint=None, obj=problem.path or "flamingock", id=f"flamingock.{problem.code}") for problem in pipeline_discover().problems
    ]


def production_mode() -> bool:
    """The ``FLAMINGOCK_PRODUCTION`` setting, which the settings module decides when it loads (the
    reference site's: a protected environment, or the variable ``FLAMINGOCK_PRODUCTION=1``); without
    that setting (a host project's settings), whether the environment is protected.

    Decided with the settings, not again on every call: a test that makes an environment protected
    for a moment (``settings.FLAMINGOCK_ENVIRONMENT = "prod"``) exercises governance, not a deployment."""
    production = getattr(settings, "FLAMINGOCK_PRODUCTION", None)
    if production is None:
        return getattr(settings, "FLAMINGOCK_ENVIRONMENT", "") in getattr(settings, "FLAMINGOCK_PROTECTED_ENVIRONMENTS", ())
    return bool(production)


def _secret_key_weakness(key: str) -> str | None:
    if not key or key in BUILT_IN_SECRET_KEYS:
        return "SECRET_KEY is the built-in development key (DJANGO_SECRET_KEY is not set)"
    if key.startswith("django-insecure-"):
        return "SECRET_KEY is a key Django generated for development (it starts with 'django-insecure-')"
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return (
            f"SECRET_KEY is weak: {len(key)} characters, {len(set(key))} different "
            f"(at least {SECRET_KEY_MIN_LENGTH} and {SECRET_KEY_MIN_UNIQUE_CHARACTERS} are needed)"
        )
    return None


def _signing_key_problem() -> str | None:
    if not (os.environ.get("FLAMINGOCK_AUDIT_SIGNING_KEY") or os.environ.get("FLAMINGOCK_AUDIT_SIGNING_KEY_FILE")):
        return "no audit signing key is configured (FLAMINGOCK_AUDIT_SIGNING_KEY_FILE or FLAMINGOCK_AUDIT_SIGNING_KEY)"
    try:
        # By name, when a check runs in production mode: every start-up imports this module, and the
        # signing library costs the command line's start (tests/changes_app/test_cli_dispatch.py).
        import_string(SIGNING_KEY)()
    except (ImproperlyConfigured, OSError, ValueError) as error:
        return f"the audit signing key cannot be loaded: {error}"
    return None


@register(Tags.security, PRODUCTION_TAG, deploy=False)
def production_check(app_configs=None, **kwargs):
    """In production mode, an Error for each unsafe setting; nothing outside it."""
    if not production_mode():
        return []
    environment = getattr(settings, "FLAMINGOCK_ENVIRONMENT", "")
    protected = environment in getattr(settings, "FLAMINGOCK_PROTECTED_ENVIRONMENTS", ())
    where = f"production mode ({f'the protected environment {environment!r}' if protected else 'FLAMINGOCK_PRODUCTION'})"
    errors = []
    weakness = _secret_key_weakness(getattr(settings, "SECRET_KEY", "") or "")
    if weakness:
        errors.append(
            Error(
                f"{weakness}, in {where}.",
                hint='Set DJANGO_SECRET_KEY to 50 or more random characters: python -c "import secrets; print(secrets.token_urlsafe(64))". '
                f"See {CHECKLIST}.",
                id="flamingock.E101",
            )
        )
    if settings.DEBUG:
        errors.append(Error(f"DEBUG is on in {where}: error pages would show settings and code.", hint="Unset DJANGO_DEBUG.", id="flamingock.E102"))
    hosts = list(settings.ALLOWED_HOSTS)
    if not hosts or "*" in hosts:
        errors.append(
            Error(
                f"ALLOWED_HOSTS is {'empty' if not hosts else 'open to any host (*)'} in {where}.",
                hint=f"Set DJANGO_ALLOWED_HOSTS to the host names the proxy forwards, comma-separated. See {CHECKLIST}.",
                id="flamingock.E103",
            )
        )
    problem = _signing_key_problem()
    if problem:
        errors.append(
            Error(
                f"{problem[0].upper()}{problem[1:]}, in {where}: audit checkpoints and exports could not be signed.",
                hint=f"Set FLAMINGOCK_AUDIT_SIGNING_KEY_FILE to a file (mode 0600) holding the Ed25519 key. See {CHECKLIST}.",
                id="flamingock.E104",
            )
        )
    if getattr(settings, "FLAMINGOCK_DEMO", False) or apps.is_installed("examples"):
        errors.append(
            Error(
                f"The demo (the example app and its example pipeline) is on in {where}.",
                hint="Unset FLAMINGOCK_DEMO and leave 'examples' out of INSTALLED_APPS.",
                id="flamingock.E105",
            )
        )
    return errors


#: The admin configuration that makes the product's site Django's default one.
PRODUCT_ADMIN_SITE = "changes_app.admin.site.default_site"


@register(Tags.admin, "flamingock")
def install_check(app_configs=None, **kwargs):
    """How the apps are installed in a project (docs/install.md): the product's admin site is the
    default one, and changes_app comes before the admin, whose templates it overrides."""
    if not apps.is_installed("django.contrib.admin"):
        return []
    admin_config = apps.get_app_config("admin")
    warnings = []
    if getattr(admin_config, "default_site", "") != PRODUCT_ADMIN_SITE:
        warnings.append(
            Warning(
                "Django's admin is installed with its own default site, not the product's: the Flamingock dashboard and pages would be missing.",
                hint="Replace 'django.contrib.admin' in INSTALLED_APPS with 'changes_app.apps.FlamingockAdminConfig' (docs/install.md).",
                obj="INSTALLED_APPS",
                id="flamingock.W201",
            )
        )
    labels = [config.label for config in apps.get_app_configs()]
    if "changes_app" in labels and labels.index("admin") < labels.index("changes_app"):
        warnings.append(
            Warning(
                "The admin comes before changes_app in INSTALLED_APPS: Django's admin templates would hide the product's (its layout, dashboard and login).",
                hint="List 'changes_app' (and 'audit_app') before the admin configuration in INSTALLED_APPS (docs/install.md).",
                obj="INSTALLED_APPS",
                id="flamingock.W202",
            )
        )
    return warnings
