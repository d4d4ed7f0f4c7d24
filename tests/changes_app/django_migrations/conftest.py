"""The fixture apps (tests/fixtures/django_apps) installed and governed, on the test database."""

from pathlib import Path

import pytest

from changes_app.pipeline.discovery import pipeline_load

APPS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "django_apps"


@pytest.fixture
def django_apps(settings, monkeypatch, targets):
    """djm_shop and djm_notes installed, their migrations governed; no other stage."""
    monkeypatch.syspath_prepend(str(APPS_DIR))
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "djm_shop", "djm_notes"]
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = ["djm_shop", "djm_notes"]
    settings.FLAMINGOCK_DISCOVER_APPS = False
    settings.FLAMINGOCK_STAGES = []
    # Child processes: the same apps through a settings module that adds them.
    monkeypatch.setenv("PYTHONPATH", f"{APPS_DIR}:{Path(__file__).resolve().parents[3]}")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "settings")
    return pipeline_load(reload=True)
