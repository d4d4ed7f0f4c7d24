"""``demo_setup``: the catalogue synced, the demo users ready to log in, safe to run again."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from changes_app.management.commands.demo_setup import DEMO_USERS
from changes_app.models import ChangeRecord, TargetSystem

pytestmark = pytest.mark.django_db

EXAMPLE_CHANGES = {"shop-create-customers", "shop-add-customer-status", "shop-backfill-customer-status", "shop-create-orders"}


def demo_setup(*args: str) -> tuple[str, dict[str, str]]:
    """Run the command; returns its output and the printed password of each user."""
    out = io.StringIO()
    call_command("demo_setup", *args, stdout=out)
    text = out.getvalue()
    return text, dict(re.findall(r"^\s+(\S+)\s+password: (\S+)", text, re.MULTILINE))


def admin_login(client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_demo_setup_creates_an_administrator_whose_printed_password_logs_in(client):
    _, passwords = demo_setup()

    assert set(passwords) == {spec.username for spec in DEMO_USERS} and "admin" in passwords
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.is_active
    response = admin_login(client, "admin", passwords["admin"])
    assert response.status_code == 302 and response.url == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_demo_setup_syncs_the_example_catalogue():
    demo_setup()

    assert EXAMPLE_CHANGES <= set(ChangeRecord.objects.filter(removed_at__isnull=True).values_list("change_id", flat=True))
    assert TargetSystem.objects.filter(name="app-db", retired_at__isnull=True).exists()


def test_demo_setup_run_again_keeps_one_admin_and_only_the_new_password_works(client):
    _, first = demo_setup()
    _, second = demo_setup()

    assert get_user_model().objects.filter(username="admin").count() == 1
    assert ChangeRecord.objects.filter(change_id__in=EXAMPLE_CHANGES).count() == len(EXAMPLE_CHANGES)
    assert first["admin"] != second["admin"]
    assert admin_login(client, "admin", first["admin"]).status_code == 200  # the form again, with an error
    assert "_auth_user_id" not in client.session
    assert admin_login(client, "admin", second["admin"]).status_code == 302
    assert client.session["_auth_user_id"] == str(get_user_model().objects.get(username="admin").pk)


def test_demo_setup_restores_a_demoted_administrator():
    demo_setup()
    get_user_model().objects.filter(username="admin").update(is_superuser=False, is_staff=False, is_active=False)

    _, passwords = demo_setup()

    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.is_active
    assert admin.check_password(passwords["admin"])


def test_demo_setup_prints_each_password_and_where_to_log_in():
    text, passwords = demo_setup("--base-url", "http://127.0.0.1:8123/")

    assert len(passwords["admin"]) >= 16
    assert f"admin  password: {passwords['admin']}" in text
    assert "Log in at http://127.0.0.1:8123/admin/" in text.splitlines()[-1]
