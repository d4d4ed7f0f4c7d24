"""Prometheus metrics: django-prometheus's HTTP and database metrics, and the product's own, read
from the database at scrape time.

Runs, applies and audit entries are counted from their rows, not in the memory of the process that
did the work: a gunicorn worker, a Celery worker and a ``manage.py flamingock run`` all count, and
whichever process answers ``/metrics`` reports the same numbers, with no multiprocess directory.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

import prometheus_client
from django.conf import settings
from django.db.models import Count, Min, Q, Sum
from django.http import HttpResponse, HttpResponseForbidden, HttpResponseNotFound
from django.utils import timezone
from django.views.decorators.cache import never_cache
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from audit_app.models import STATE_EVENTS, AuditEntry, ChainHead, ChangeStateName, Verification
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ChangeRequest, Finding, Run

logger = logging.getLogger("flamingock.metrics")

#: Upper bounds (seconds) of the apply-duration histogram's buckets.
APPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: The audit events whose duration is a change's apply, by the outcome label they get.
APPLY_EVENTS = {STATE_EVENTS[ChangeStateName.APPLIED]: "applied", STATE_EVENTS[ChangeStateName.FAILED]: "failed"}
#: Client addresses /metrics answers outside production mode when nothing is configured.
LOOPBACK = ("127.0.0.1/32", "::1/128")


class FlamingockCollector(Collector):
    """The product's metrics, each family one aggregate query. A family whose query fails is left
    out of the scrape and counted in ``flamingock_metrics_errors``; the others are still reported."""

    def collect(self):
        errors = 0
        for family in (self.runs, self.apply_duration, self.requests, self.findings, self.lock, self.verification, self.audit_entries):
            try:
                yield from family()
            except Exception:
                errors += 1
                logger.exception("metrics: %s could not be read", family.__name__)
        failed = GaugeMetricFamily("flamingock_metrics_errors", "Metric families left out of this scrape because they could not be read.")
        failed.add_metric([], errors)
        yield failed

    def runs(self):
        family = CounterMetricFamily("flamingock_runs", "Finished runs by outcome (their status) and kind.", labels=["outcome", "kind"])
        rows = Run.objects.filter(status__in=Run.FINISHED).order_by().values("status", "kind").annotate(n=Count("pk"))
        for row in rows:
            family.add_metric([row["status"], row["kind"]], row["n"])
        yield family

    def apply_duration(self):
        family = HistogramMetricFamily(
            "flamingock_change_apply_duration_seconds", "Seconds each change's apply took, by outcome (from the audit trail).", labels=["outcome"]
        )
        buckets = {f"le_{index}": Count("pk", filter=Q(duration_ms__lte=bound * 1000)) for index, bound in enumerate(APPLY_BUCKETS)}
        rows = (
            AuditEntry.objects.filter(event__in=APPLY_EVENTS, duration_ms__isnull=False)
            .order_by()
            .values("event")
            .annotate(total=Count("pk"), milliseconds=Sum("duration_ms"), **buckets)
        )
        for row in rows:
            counts = [(str(float(bound)), row[f"le_{index}"]) for index, bound in enumerate(APPLY_BUCKETS)]
            family.add_metric([APPLY_EVENTS[row["event"]]], [*counts, ("+Inf", row["total"])], (row["milliseconds"] or 0) / 1000)
        yield family

    def requests(self):
        pending = ChangeRequest.objects.filter(status=ChangeRequest.Status.PENDING).aggregate(n=Count("pk"), oldest=Min("created_at"))
        count = GaugeMetricFamily("flamingock_requests_pending", "Change requests waiting for a decision.")
        count.add_metric([], pending["n"])
        age = GaugeMetricFamily("flamingock_requests_pending_oldest_age_seconds", "Age of the oldest pending request (0 when none).")
        age.add_metric([], (timezone.now() - pending["oldest"]).total_seconds() if pending["oldest"] else 0)
        yield from (count, age)

    def findings(self):
        family = GaugeMetricFamily("flamingock_findings_open", "Drift findings not resolved, by kind and status.", labels=["kind", "status"])
        rows = Finding.objects.filter(status__in=Finding.ACTIVE).order_by().values("kind", "status").annotate(n=Count("pk"))
        for row in rows:
            family.add_metric([row["kind"], row["status"]], row["n"])
        yield family

    def lock(self):
        family = GaugeMetricFamily("flamingock_lock_held_seconds", "Seconds the pipeline lock has been held (0 when free).", labels=["lock"])
        backend = lock_backend_shared()
        holder = backend.holder()
        held = holder is not None and not holder.expired and holder.since is not None
        family.add_metric([backend.name], max(0.0, (timezone.now() - holder.since).total_seconds()) if held else 0)
        yield family

    def verification(self):
        last = Verification.objects.order_by("-performed_at").values("performed_at", "ok").first()
        age = GaugeMetricFamily("flamingock_audit_verification_age_seconds", "Seconds since the last chain verification (+Inf when never).")
        age.add_metric([], (timezone.now() - last["performed_at"]).total_seconds() if last else float("inf"))
        ok = GaugeMetricFamily("flamingock_audit_verification_ok", "1 when the last chain verification found the chain intact.")
        ok.add_metric([], 1 if last and last["ok"] else 0)
        yield from (age, ok)

    def audit_entries(self):
        head = ChainHead.objects.filter(pk=1).values_list("seq", flat=True).first()
        family = CounterMetricFamily("flamingock_audit_entries", "Entries in the audit trail (the chain head's sequence number).")
        family.add_metric([], head or 0)
        yield family


#: The product's registry, apart from prometheus_client's default one (django-prometheus's).
PRODUCT_REGISTRY = prometheus_client.CollectorRegistry(auto_describe=False)
PRODUCT_REGISTRY.register(FlamingockCollector())


def process_registry() -> prometheus_client.CollectorRegistry:
    """django-prometheus's metrics: this process's, or every worker's when prometheus_client's
    multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, docs/operators.md)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return prometheus_client.REGISTRY


def address_allowed(address: str, networks) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in ipaddress.ip_network(network, strict=False) for network in networks)


def bearer_token(request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def scrape_refusal(request) -> HttpResponse | None:
    """Why this caller may not scrape, as the response to give; None when it may.

    The token (``FLAMINGOCK_METRICS_TOKEN``, compared in constant time) or an address of the
    allow-list (``FLAMINGOCK_METRICS_ALLOWED_IPS``) lets a caller in. With neither configured,
    production mode answers 404, and elsewhere only a loopback caller is answered."""
    token = getattr(settings, "FLAMINGOCK_METRICS_TOKEN", "")
    networks = getattr(settings, "FLAMINGOCK_METRICS_ALLOWED_IPS", [])
    address = request.META.get("REMOTE_ADDR", "")
    if not token and not networks:
        if settings.FLAMINGOCK_PRODUCTION:
            return HttpResponseNotFound(
                "metrics are off: set FLAMINGOCK_METRICS_TOKEN or FLAMINGOCK_METRICS_ALLOWED_IPS\n", content_type="text/plain"
            )
        return (
            None if address_allowed(address, LOOPBACK) else HttpResponseForbidden("metrics answer loopback callers only\n", content_type="text/plain")
        )
    given = bearer_token(request)
    if token and given and hmac.compare_digest(given.encode(), token.encode()):
        return None
    if networks and address_allowed(address, networks):
        return None
    if token:
        response = HttpResponse("a bearer token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponseForbidden("this address may not read the metrics\n", content_type="text/plain")


@never_cache
def metrics(request):
    refusal = scrape_refusal(request)
    if refusal is not None:
        return refusal
    body = prometheus_client.generate_latest(process_registry()) + prometheus_client.generate_latest(PRODUCT_REGISTRY)
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)
