"""``python -m tests.support.oidc_provider.provision REDIRECT_URI CLIENT_ID CLIENT_SECRET``: migrate
the provider's database, make its signing key, a person with groups, and the product's client."""

import os
import sys

import django


def main(redirect_uri: str, client_id: str, client_secret: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.oidc_provider.settings")
    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from oidc_provider.models import Client, ResponseType

    call_command("migrate", verbosity=0)
    call_command("creatersakey")
    ada = User.objects.create_user("ada", email="ada@example.com", password=os.environ["OIDC_TEST_PASSWORD"], first_name="Ada", last_name="Lovelace")
    ada.groups.add(Group.objects.create(name="dba-team"), Group.objects.create(name="coffee-club"))
    client = Client.objects.create(
        name="Flamingock", client_type="confidential", client_id=client_id, client_secret=client_secret, _redirect_uris=redirect_uri, jwt_alg="RS256"
    )
    client.response_types.add(ResponseType.objects.get(value="code"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
