"""The writer's one statement on PostgreSQL leaves the session as any statement would."""

import time

import pytest
from django.db import DatabaseError, connection, transaction

from audit_app.models import AuditEntry
from audit_app.services import Actor, audit_record

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_transaction_left_idle_after_an_entry_is_ended_by_the_server_and_the_entry_is_not_kept():
    """A paused lock holder is cut off by idle_in_transaction_session_timeout (DOMAIN §7); the
    writer must not leave its session in a state the server does not time out (pipeline mode did)."""
    with connection.cursor() as cursor:
        cursor.execute("SET idle_in_transaction_session_timeout = 300")
    before = AuditEntry.objects.count()
    try:
        with pytest.raises(DatabaseError):
            with transaction.atomic():
                audit_record(event="test.idle", actor=Actor(name="tester"), environment="dev")
                time.sleep(1.2)  # idle in transaction, four times the timeout
    finally:
        connection.close()
    assert AuditEntry.objects.count() == before


def test_the_prepared_statement_is_logged_with_its_values_in_debug_mode(settings):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        audit_record(event="test.logged", actor=Actor(name="tester"), environment="dev")
    written = [query["sql"] for query in queries.captured_queries if "audit_app_auditentry" in (query["sql"] or "")]
    assert written and "'test.logged'" in written[0]
