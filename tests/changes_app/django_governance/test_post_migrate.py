"""``post_migrate`` after governed migrations (issue 21; docs/django-migrations.md, "Execution"): a run
that applied Django migrations sends it for the apps it migrated only, so their content types and
permissions exist at once, and never records the deployed pipeline (only ``migrate`` and the web
process do)."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db.models.signals import post_migrate

from changes_app.models import DeployedPipeline, Run
from changes_app.targets.django_migrations import post_migrate_send
from tests.support.trails import run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = """from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=100)
    sku = models.CharField(max_length=32, default="")
"""


@pytest.fixture
def shop_models(shop, settings):
    """``djgov_shop`` with a models module (its migrations create ``Product``)."""
    (shop / "models.py").write_text(MODELS)
    settings.INSTALLED_APPS = list(settings.INSTALLED_APPS)  # reload the registry: the models module is imported
    assert apps.get_app_config("djgov_shop").models_module is not None
    yield shop
    # The registry keeps registered models across reloads: forget this one for the tests that follow.
    apps.all_models["djgov_shop"].pop("product", None)
    apps.clear_cache()


@pytest.fixture
def sent():
    """Every ``post_migrate`` sent while the test runs: (sender label, using, flamingock_run)."""
    seen: list[tuple[str, str, bool]] = []

    def record(sender, *, using="default", **kwargs):
        seen.append((sender.label, using, bool(kwargs.get("flamingock_run"))))

    post_migrate.connect(record, weak=False, dispatch_uid="tests.post_migrate.sent")
    yield seen
    post_migrate.disconnect(dispatch_uid="tests.post_migrate.sent")


def test_a_run_that_applies_migrations_creates_their_content_types_and_permissions(shop_models, sent):
    assert not ContentType.objects.filter(app_label="djgov_shop").exists()
    deployed = list(DeployedPipeline.objects.values())

    run = run_pipeline()
    assert run.status == Run.Status.SUCCEEDED, run.status_reason

    product = ContentType.objects.get(app_label="djgov_shop", model="product")
    assert set(Permission.objects.filter(content_type=product).values_list("codename", flat=True)) == {
        "add_product",
        "change_product",
        "delete_product",
        "view_product",
    }
    # Sent for the migrated app only, once, flagged as a governed run's: changes_app never hears it.
    assert sent == [("djgov_shop", "default", True)]
    assert list(DeployedPipeline.objects.values()) == deployed


def test_a_run_that_applies_nothing_sends_nothing(shop_models, sent):
    assert run_pipeline().status == Run.Status.SUCCEEDED
    sent.clear()
    again = run_pipeline()
    assert again.status == Run.Status.NO_CHANGES
    assert sent == []


def test_an_app_without_models_or_not_migrated_gets_nothing(shop, sent):
    # djgov_shop as shipped has no models module: nothing to create, nothing sent (as migrate does).
    assert post_migrate_send("default", {"djgov_shop"}) == []
    assert post_migrate_send("default", set()) == []
    assert sent == []
