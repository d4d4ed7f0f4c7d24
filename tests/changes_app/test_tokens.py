"""Personal API tokens are credentials: creating and revoking one is audited, the key never is."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app.governance.identity import TokenLifetimeRefused, token_create, token_user
from changes_app.governance.permission_audit import acting_as
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


# -- lifetime and deactivation (docs/sso.md, "Personal API tokens") ----------------------------------


def api_status(client, key: str) -> int:
    return client.get("/api/v1/targets/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code


def test_a_token_created_without_expiry_gets_the_maximum_lifetime(settings):
    settings.FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = 30
    owner = get_user_model().objects.create_user("alice")
    before = timezone.now()

    token, _ = token_create(user=owner, name="ci", created_by="root")

    assert before + timedelta(days=30) <= token.expires_at <= timezone.now() + timedelta(days=30)


def test_a_token_beyond_the_maximum_lifetime_is_refused_clearly_and_nothing_is_written(settings):
    settings.FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = 30
    owner = get_user_model().objects.create_user("alice")
    before = AuditEntry.objects.count()

    with pytest.raises(TokenLifetimeRefused, match=r"a token lives at most 30 days \(FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS\)"):
        token_create(user=owner, name="ci", created_by="root", expires_at=timezone.now() + timedelta(days=31))
    with pytest.raises(TokenLifetimeRefused, match="must be in the future"):
        token_create(user=owner, name="ci", created_by="root", expires_at=timezone.now() - timedelta(seconds=1))

    assert not ApiToken.objects.exists() and AuditEntry.objects.count() == before


def test_the_admin_form_refuses_an_expiry_beyond_the_maximum(client, settings):
    settings.FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = 30
    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", None)
    owner = get_user_model().objects.create_user("alice")
    client.force_login(admin_user)
    too_late = timezone.now() + timedelta(days=400)
    form = {"user": owner.pk, "name": "ci", "expires_at_0": f"{too_late:%Y-%m-%d}", "expires_at_1": f"{too_late:%H:%M:%S}"}

    response = client.post(reverse("admin:changes_app_apitoken_add"), form)

    assert response.status_code == 200
    assert "a token lives at most 30 days" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_cli_refuses_a_lifetime_beyond_the_maximum_and_grants_a_shorter_one(settings):
    settings.FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = 30
    get_user_model().objects.create_user("alice")

    refused = cli("token", "create", "alice", "--days", "31")
    assert (refused.code, ApiToken.objects.count()) == (2, 0)
    assert "a token lives at most 30 days" in refused.err + refused.out

    granted = cli("token", "create", "alice", "--days", "7", "--json")
    assert granted.code == 0
    token = ApiToken.objects.get()
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)
    assert cli("token", "list", "--json").json()[0]["status"] == "active"


def test_the_api_answers_401_to_an_expired_token(client):
    owner = get_user_model().objects.create_user("alice")
    token, key = token_create(user=owner, name="ci", created_by="root")
    assert api_status(client, key) == 200

    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert api_status(client, key) == 401


def test_a_token_row_without_expiry_lives_the_maximum_from_its_creation(client, settings):
    settings.FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS = 30
    owner = get_user_model().objects.create_user("alice")
    token, key = token_create(user=owner, name="ci", created_by="root")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=None, created_at=timezone.now() - timedelta(days=29))
    assert api_status(client, key) == 200

    ApiToken.objects.filter(pk=token.pk).update(created_at=timezone.now() - timedelta(days=31))

    assert api_status(client, key) == 401


def test_deactivating_a_user_revokes_their_tokens_audited_and_the_api_answers_401(client):
    owner = get_user_model().objects.create_user("alice")
    first, key = token_create(user=owner, name="ci", created_by="root")
    second, _ = token_create(user=owner, name="laptop", created_by="root")
    assert api_status(client, key) == 200

    with acting_as(Actor(name="root", via="ui")):
        owner.is_active = False
        owner.save()

    assert api_status(client, key) == 401
    revoked = AuditEntry.objects.filter(event="permission.revoked", details__credential="api_token").order_by("id")
    assert [(e.actor, e.details["token_id"], e.reason) for e in revoked] == [
        ("root", first.pk, "user deactivated"),
        ("root", second.pk, "user deactivated"),
    ]
    assert set(ApiToken.objects.values_list("revoked_reason", flat=True)) == {"user deactivated"}
    assert key not in str(list(AuditEntry.objects.values_list("details", flat=True)))


def test_a_deactivated_users_token_is_refused_even_before_it_is_revoked(client):
    owner = get_user_model().objects.create_user("alice")
    _, key = token_create(user=owner, name="ci", created_by="root")

    get_user_model().objects.filter(pk=owner.pk).update(is_active=False)  # no signal: a bulk update

    assert api_status(client, key) == 401


def test_a_deactivated_user_gets_no_new_token():
    owner = get_user_model().objects.create_user("alice", is_active=False)

    with pytest.raises(TokenLifetimeRefused, match="is deactivated"):
        token_create(user=owner, name="ci", created_by="root")
