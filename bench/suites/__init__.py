"""Benchmark suites. Each module exposes ``suite(context) -> harness.Suite``; add new ones to SUITES."""

SUITES = [
    "bench.suites.pipeline_scale",
    "bench.suites.audit_admin",
    "bench.suites.governance_pages",
    "bench.suites.audit_bulk",
    "bench.suites.run_start",
    "bench.suites.lock_cycles",
    "bench.suites.api_latency",
    "bench.suites.django_migrations",
    "bench.suites.trail_scale",
]
