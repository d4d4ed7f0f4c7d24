"""Benchmark suites. Each module exposes ``suite(context) -> harness.Suite``; add new ones to SUITES."""

SUITES = [
    "bench.suites.pipeline_scale",
]
