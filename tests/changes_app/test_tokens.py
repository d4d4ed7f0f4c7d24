"""Personal API tokens are credentials: creating and revoking one is audited, the key never is."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit_app.models import AuditEntry
from changes_app.governance.identity import token_create, token_user
from changes_app.models import ApiToken
from tests.support.trails import cli

pytestmark = pytest.mark.django_db


def test_token_created_in_the_admin_is_audited_without_its_key(client):
    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", None)
    owner = get_user_model().objects.create_user("alice")
    client.force_login(admin_user)
    before = AuditEntry.objects.count()

    response = client.post(reverse("admin:changes_app_apitoken_add"), {"user": owner.pk, "name": "ci"}, follow=True)

    token = ApiToken.objects.get(user=owner)
    key = next(str(m).rsplit(" ", 1)[-1] for m in response.context["messages"])
    assert token_user(key) == owner
    entry = AuditEntry.objects.get(seq__gt=0, event="permission.granted", details__token_id=token.pk)
    assert (entry.actor, entry.details["user"], entry.details["token_prefix"]) == ("root", "alice", token.key_prefix)
    assert AuditEntry.objects.count() == before + 1
    assert not AuditEntry.objects.filter(details__icontains=key).exists()
    assert key not in str(entry.details)


def test_token_revoked_in_the_admin_stops_working_and_is_audited(client):
    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", None)
    owner = get_user_model().objects.create_user("alice")
    token, key = token_create(user=owner, name="ci", created_by="root")
    client.force_login(admin_user)

    client.post(reverse("admin:changes_app_apitoken_changelist"), {"action": "revoke", "_selected_action": [token.pk]})

    assert token_user(key) is None
    entry = AuditEntry.objects.get(event="permission.revoked", details__token_id=token.pk)
    assert (entry.actor, entry.details["user"]) == ("root", "alice")


def test_cli_revokes_a_token_once_and_refuses_an_unknown_one():
    owner = get_user_model().objects.create_user("alice")
    token, key = token_create(user=owner, name="ci", created_by="root")

    assert cli("token", "revoke", "--id", str(token.pk)).code == 0
    assert token_user(key) is None
    assert AuditEntry.objects.filter(event="permission.revoked", details__token_id=token.pk).count() == 1
    assert cli("token", "revoke", "--id", str(token.pk)).code == 2
    assert AuditEntry.objects.filter(event="permission.revoked", details__token_id=token.pk).count() == 1
