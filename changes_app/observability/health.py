"""The product's health checks and the three health endpoints (docs/semantics.md §13.11, docs/operators.md).

``/health/live/`` answers without any I/O; ``/health/ready/`` checks the database and the cache,
which every request needs; ``/health/detail/`` adds what a web node can serve without (the broker,
a worker, migrations, the age of the last chain verification), so a lagging worker never takes the
web nodes out of a load balancer. A failing check answers 503.
"""

from __future__ import annotations

import dataclasses
import datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning
from health_check.views import HealthCheckView

from audit_app.models import Verification
from changes_app.services.queue import celery_app

#: Seconds after which the last chain verification counts as too old (the daily task plus slack).
DEFAULT_VERIFICATION_MAX_AGE = 26 * 3600


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker accepts a connection."""

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=3), repr=False)

    def run(self):
        try:
            with celery_app().connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=self.timeout.total_seconds())
        except Exception as error:
            # The broker URL may carry a password: the message names the failure's kind only.
            raise ServiceUnavailable(f"the broker refused a connection ({type(error).__name__})") from error


@dataclasses.dataclass
class WorkerAnswered(HealthCheck):
    """At least one Celery worker answered a ping just now."""

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=1), repr=False)

    def run(self):
        try:
            answers = celery_app().control.ping(timeout=self.timeout.total_seconds())
        except Exception as error:
            raise ServiceUnavailable(f"no worker could be asked ({type(error).__name__})") from error
        if not answers:
            raise ServiceUnavailable(f"no worker answered within {self.timeout.total_seconds():g} s")


@dataclasses.dataclass
class MigrationsApplied(HealthCheck):
    """Every migration of the installed apps is applied to the database."""

    alias: str = DEFAULT_DB_ALIAS

    def run(self):
        executor = MigrationExecutor(connections[self.alias])
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if pending:
            names = ", ".join(f"{migration.app_label}.{migration.name}" for migration, _ in pending[:5])
            raise ServiceUnavailable(f"{len(pending)} migration(s) not applied: {names}")


@dataclasses.dataclass
class VerificationRecent(HealthCheck):
    """The audit chain was verified recently, and the last verification found it intact."""

    def run(self):
        max_age = float(getattr(settings, "FLAMINGOCK_HEALTH_VERIFICATION_MAX_AGE", DEFAULT_VERIFICATION_MAX_AGE))
        last = Verification.objects.order_by("-performed_at").values("performed_at", "ok").first()
        if last is None:
            raise ServiceWarning("the audit chain was never verified")
        age = (timezone.now() - last["performed_at"]).total_seconds()
        if not last["ok"]:
            raise ServiceUnavailable("the last verification found the audit chain broken")
        if age > max_age:
            raise ServiceWarning(f"the last verification is {age:.0f} s old (more than {max_age:.0f} s)")


class HealthView(HealthCheckView):
    """django-health-check's view, answering 503 (not 500) when a check fails."""

    async def get(self, request, *args, **kwargs):
        response = await super().get(request, *args, **kwargs)
        if response.status_code == 500:
            response.status_code = 503
        return response


READY_CHECKS = ("health_check.checks.Database", "health_check.checks.Cache")
DETAIL_CHECKS = (*READY_CHECKS, Broker, WorkerAnswered, MigrationsApplied, VerificationRecent)

ready = HealthView.as_view(checks=READY_CHECKS)
detail = HealthView.as_view(checks=DETAIL_CHECKS)


@never_cache
def live(request):
    """The process answers: no database, no cache, no broker."""
    return HttpResponse("ok\n", content_type="text/plain")
