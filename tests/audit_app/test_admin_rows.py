"""The audit list draws its rows in one pass (``TrailChangeList.rows_html``): the same markup, cell
for cell, as Django's own ``items_for_result``, for every kind of value a row holds (links, empty
values, states, times, coverage marks, text that needs escaping) and on a filtered list, whose entry
links keep the filters."""

import uuid

import pytest
from django.contrib.admin.templatetags.admin_list import results
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit_app.integrity import audit_verify, checkpoint_write, verification_record
from audit_app.services import Actor, ChangeRef, audit_record
from tests.support.audit import entry_write

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_app_auditentry_changelist"


@pytest.fixture
def varied(db):
    """Entries with every kind of value a row shows, some covered by a verification and a checkpoint."""
    user = get_user_model().objects.create_user("carol")
    entry_write("run.started", actor=Actor(name="bob", via="cli"))
    entry_write("change.applied", change_id="c-users", target="app-db", actor=Actor(name="carol", user_id=user.pk, via="admin"))
    verification_record(audit_verify(), actor=Actor(name="verifier", via="cli"))
    checkpoint_write(reason="test", force=True)
    audit_record(
        event="change.failed",
        actor=Actor(name='<script>alert("x")</script> & co', via="api"),
        environment="staging",
        change=ChangeRef(id="c-<b>odd</b>&id", target="ext <pg>"),
        state="FAILED",
        run_id=uuid.uuid4(),
    )
    entry_write("lock.acquired", target="app-db", actor=Actor(name=" ", via="cli"))
    entry_write("run.finished", actor=Actor(name="bob", via="cli"))


def django_rows(changelist) -> str:
    """The rows as Django's ``result_list`` tag draws them."""
    return "\n".join("<tr>{}</tr>".format("".join(items)) for items in results(changelist))


@pytest.mark.parametrize("query", ["", "?environment=staging", "?q=c-", "?o=-2&target=app-db"])
def test_rows_are_drawn_exactly_as_django_draws_them(admin_client, varied, query):
    response = admin_client.get(reverse(CHANGELIST) + query)
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert changelist.result_list, "the page lists entries"
    mine, djangos = changelist.rows_html(), django_rows(changelist)
    at = next((i for i, (a, b) in enumerate(zip(mine, djangos, strict=False)) if a != b), min(len(mine), len(djangos)))
    assert mine == djangos, f"first difference at {at}: {mine[at - 80 : at + 80]!r} != {djangos[at - 80 : at + 80]!r}"
    # And the page shows them: every row, escaped (the odd actor is text, not markup).
    content = response.content.decode()
    assert mine in content
    assert "<script>alert" not in content


def test_entry_links_of_a_filtered_list_keep_its_filters(admin_client, varied):
    response = admin_client.get(reverse(CHANGELIST) + "?environment=staging")
    rows = response.context["cl"].rows_html()
    assert "_changelist_filters=environment%3Dstaging" in rows
    entry = response.context["cl"].result_list[0]
    assert reverse("admin:audit_app_auditentry_change", args=[entry.pk]) in rows


def test_an_empty_page_draws_no_table(admin_client, varied):
    response = admin_client.get(reverse(CHANGELIST) + "?environment=nowhere")
    assert response.status_code == 200
    assert response.context["cl"].rows_html() == ""
    assert 'id="result_list"' not in response.content.decode()
