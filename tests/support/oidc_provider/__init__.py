"""A real OpenID Connect provider for the SSO journey (tests/browser/test_sso.py): a tiny Django
project running django-oidc-provider in a process of its own, on its own SQLite file."""
