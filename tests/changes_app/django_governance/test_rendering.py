"""What approvers see (issue 21, part 5; docs/django-migrations.md, "What approvers see"): a request on a
Django migration stores its SQL, as ``sqlmigrate`` prints it for the target database, and its RunPython
code by name and source, once; the request page and the API show them; ``plan --json --sql`` includes
them and a plain plan does not."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from audit_app.redaction import MASK
from changes_app import services
from changes_app.models import ChangeRequest, TargetSystem
from changes_app.services import rendering
from changes_app.services.representations import request_review_data
from tests.support.trails import cli, local_operator

pytestmark = pytest.mark.django_db(transaction=True)

SHOP_0001, SHOP_0002 = "django:djgov_shop.0001_initial", "django:djgov_shop.0002_seed"


def _request(change_id: str, kind: str = ChangeRequest.Kind.APPLY) -> ChangeRequest:
    """A request row as ``request_create`` writes it (the receiver under test renders it once made)."""
    services.target_systems_sync()
    return ChangeRequest.objects.create(
        kind=kind,
        change_id=change_id,
        checksum="0" * 64,
        environment="dev",
        target_system=TargetSystem.objects.get(name="app-db"),
        reason="ship it",
        requester_name="someone",
        required_approvals=1,
        expires_at=timezone.now() + timedelta(days=1),
    )


def test_a_migrations_sql_is_rendered_for_the_target_database(shop):
    rendered = services.migration_render(change_id=SHOP_0001, alias="default")
    assert rendered["vendor"] == connection.vendor and rendered["alias"] == "default" and rendered["target"] == "default"
    assert rendered["error"] == "" and rendered["run_python"] == []
    assert "CREATE TABLE" in rendered["sql"] and "djgov_shop_product" in rendered["sql"]
    quoted = '"djgov_shop_product"'
    assert quoted in rendered["sql"]  # both SQLite and PostgreSQL quote names with double quotes


def test_run_python_code_is_shown_by_name_and_source(shop):
    rendered = services.migration_render(change_id=SHOP_0002, alias="default")
    [operation] = rendered["run_python"]
    assert operation["code"]["name"].endswith("0002_seed.seed_products")
    assert "def seed_products(apps, schema_editor):" in operation["code"]["source"]
    assert operation["reverse_code"]["name"].endswith("0002_seed.unseed_products")
    assert 'filter(name="seeded").delete()' in operation["reverse_code"]["source"]


def test_what_approvers_see_is_redacted_like_any_other_text(shop, settings, monkeypatch):
    # A secret written into a migration (here the seed function's own name stands for it) is masked
    # in the SQL and the source stored on a request and served by the API.
    monkeypatch.setenv("DJGOV_SEED_SECRET", "seed_products")
    settings.FLAMINGOCK_SECRET_ENV_VARS = ["DJGOV_SEED_SECRET"]
    rendered = services.migration_render(change_id=SHOP_0002, alias="default")
    [operation] = rendered["run_python"]
    # The source is masked; the function's dotted name, an identifier, is shown as it is.
    assert "seed_products" not in operation["code"]["source"] + operation["reverse_code"]["source"] + rendered["sql"]
    assert f"def {MASK}(apps, schema_editor):" in operation["code"]["source"]


def test_a_request_stores_what_its_approvers_see_once(shop):
    request = _request(SHOP_0002)
    request.refresh_from_db()
    [stored] = request.rendered["migrations"]
    assert stored["change_id"] == SHOP_0002 and stored["direction"] == "forwards"
    assert "seed_products" in stored["run_python"][0]["code"]["source"]

    # Edited afterwards: the request keeps what was rendered when it was made.
    path = shop / "migrations" / "0002_seed.py"
    path.write_text(path.read_text().replace('name="seeded"', 'name="changed"'))
    assert rendering.request_rendered_store(request.pk) == request.rendered
    request.refresh_from_db()
    assert stored == request.rendered["migrations"][0]

    undo = _request(SHOP_0001, ChangeRequest.Kind.UNDO)
    undo.refresh_from_db()
    assert undo.rendered["migrations"][0]["direction"] == "backwards"
    assert "DROP TABLE" in undo.rendered["migrations"][0]["sql"]


def test_requests_that_run_no_migration_render_nothing(shop):
    assert _request("some-other-change").rendered == {}
    marked = _request(SHOP_0001, ChangeRequest.Kind.MARK_APPLIED)
    marked.refresh_from_db()
    assert marked.rendered == {}


def test_the_request_page_and_the_api_show_the_sql_and_the_python(shop, client):
    request = _request(SHOP_0002)
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    page = client.get(reverse("admin:changes_app_changerequest_change", args=[request.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="flk-django-sql"' in html and "def seed_products(apps, schema_editor):" in html
    assert "0002_seed.unseed_products" in html

    request.refresh_from_db()
    review = services.request_review(request=request, actor=local_operator())
    data = request_review_data(review)
    assert data["rendered"]["migrations"][0]["change_id"] == SHOP_0002


def test_plan_json_sql_includes_them_and_a_plain_plan_does_not(shop, monkeypatch):
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    assert cli("adopt", "django", "--reason", "taken over").code == 0

    def refuse(**kwargs):
        raise AssertionError("a plain plan rendered SQL")

    with monkeypatch.context() as patched:
        patched.setattr(rendering, "migration_render", refuse)
        plain = cli("plan", "--json")
    assert plain.code == 0, plain.err
    assert "rendered" not in json.loads(plain.out)

    with_sql = cli("plan", "--json", "--sql")
    assert with_sql.code == 0, with_sql.err
    rendered = json.loads(with_sql.out)["rendered"]
    # The adopted 0001 is applied: only the pending ones are rendered.
    assert [m["change_id"] for m in rendered] == [SHOP_0002, "django:djgov_shop.0003_product_sku"]
    assert "seed_products" in rendered[0]["run_python"][0]["code"]["source"]
    assert "sku" in rendered[1]["sql"]
    text = cli("plan", "--sql")
    assert "-- django:djgov_shop.0003_product_sku on default" in text.out
