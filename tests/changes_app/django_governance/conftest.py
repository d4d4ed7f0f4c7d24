"""The fixture apps of these tests (tests/fixtures/django_gov_apps), copied per test into a temporary
directory, installed and governed; the test database is reset after each transactional test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from changes_app.pipeline.discovery import pipeline_load

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "django_gov_apps"
APP = "djgov_shop"


def _forget_app_modules() -> None:
    for name in [name for name in sys.modules if name == APP or name.startswith(f"{APP}.")]:
        del sys.modules[name]


@pytest.fixture
def shop(tmp_path, settings, monkeypatch, targets) -> Path:
    """``djgov_shop`` installed and governed on ``default``; returns the app's directory (a copy)."""
    root = tmp_path / "django_gov_apps"
    shutil.copytree(FIXTURES, root)
    _forget_app_modules()
    monkeypatch.syspath_prepend(str(root))
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, f"{APP}.apps.DjgovShopConfig"]
    settings.FLAMINGOCK_DJANGO_MIGRATIONS = [APP]
    # No other changes: the Django stage is the whole pipeline.
    settings.FLAMINGOCK_DISCOVER_APPS = False
    settings.FLAMINGOCK_STAGES = []
    monkeypatch.setenv("FLAMINGOCK_STAGES", "")
    monkeypatch.setenv("FLAMINGOCK_DISCOVER_APPS", "0")
    pipeline_load(reload=True)
    yield root / APP
    _forget_app_modules()
