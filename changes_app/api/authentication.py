"""Personal API tokens in the ``Authorization`` header: ``Bearer <key>`` or ``Token <key>``.

Only the key's hash is stored; :func:`changes_app.governance.identity.token_user` finds the active user of a
valid, unrevoked, unexpired token. A token lives at most ``FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS`` and dies with
its user's deactivation (docs/sso.md): both answer 401 here, from the next request on.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from changes_app.governance.identity import token_user

KEYWORDS = ("bearer", "token")


class ApiTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in KEYWORDS:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        try:
            key = header[1].decode("utf-8")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is not valid.") from None
        user = token_user(key)
        if user is None:
            raise exceptions.AuthenticationFailed("The token is not valid, revoked or expired.")
        return user, key

    def authenticate_header(self, request):
        # A 401 (not a 403) for requests without credentials.
        return 'Bearer realm="api"'


class ApiTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token (admin: API tokens). `Authorization: Bearer flk_...` (or `Token flk_...`).",
        }
