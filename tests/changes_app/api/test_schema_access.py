"""The OpenAPI schema and Swagger UI (docs/api.md): open outside production mode; in production mode
only for a logged-in user (issue 19's finding: anonymous users were served both in production)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

PAGES = ("/api/v1/schema/", "/api/v1/docs/")


@pytest.mark.parametrize("path", PAGES)
def test_production_mode_refuses_the_schema_and_swagger_ui_to_anonymous_users(settings, path):
    settings.FLAMINGOCK_PRODUCTION = True
    response = APIClient().get(path)
    assert response.status_code == 401
    assert b"openapi" not in response.content and b"swagger" not in response.content.lower()


def test_production_mode_refusal_of_the_schema_is_in_the_api_error_shape(settings):
    settings.FLAMINGOCK_PRODUCTION = True
    response = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_production_mode_refuses_the_schema_to_a_wrong_token(settings):
    settings.FLAMINGOCK_PRODUCTION = True
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer flk_not-a-token")
    assert client.get("/api/v1/schema/").status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_production_mode_serves_the_schema_and_swagger_ui_to_a_logged_in_user(settings, people, path):
    settings.FLAMINGOCK_PRODUCTION = True
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {people['compliance'].token}")
    response = client.get(path)
    assert response.status_code == 200
    assert (b"openapi" in response.content) if path.endswith("schema/") else (b"swagger" in response.content.lower())


def test_production_mode_serves_swagger_ui_to_an_admin_session(settings, people):
    settings.FLAMINGOCK_PRODUCTION = True
    client = APIClient()
    client.force_login(people["approver"].user)
    assert client.get("/api/v1/docs/").status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_outside_production_mode_the_schema_stays_open(settings, path):
    settings.FLAMINGOCK_PRODUCTION = False
    assert APIClient().get(path).status_code == 200
