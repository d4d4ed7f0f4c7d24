"""What monitoring sees: health endpoints for load balancers and probes, and Prometheus metrics read
from the database at scrape time (docs/operators.md, "Health and metrics")."""
