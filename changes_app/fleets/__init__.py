"""Fleets (issue 22): target groups and their members, a lock and a ledger per member, and fleet runs
dispatched on Celery in waves (docs/fleet.md)."""
