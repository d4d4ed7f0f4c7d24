"""A migrated database holding a real hash-chained audit trail of N entries, built once per run.

The audit benchmarks (admin changelist, API list, export, verify) share it: the first caller builds
a template database (``manage.py migrate``, then the entries with ``COPY``, hashes computed the way
the product computes them, chain head set, ``ANALYZE``), later callers get a clone of it. Building a
million entries takes about a minute on two cores; the clone a few seconds.

    from bench.audit_data import audit_database
    name = audit_database(context, entries=1_000_000)          # a fresh clone, dropped at the end
    url = context.pg.database_url(name)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from bench.harness import REPO, Context, log

#: Distinct change ids in the generated trail: each has entries / CHANGES entries.
CHANGES = 5000
_TEMPLATES: dict[tuple[int, int], str] = {}


def product_env(context: Context, database: str) -> dict[str, str]:
    """The environment of a product process working on ``database`` (bytecode caches on)."""
    env = context.base_env()
    env.update(
        DATABASE_URL=context.pg.database_url(database).replace("postgresql://", "postgres://", 1),
        DJANGO_SETTINGS_MODULE="flamingock_site.settings",
        PYTHONPATH=str(REPO),
    )
    return env


def _build(context: Context, entries: int) -> str:
    name = context.pg.database_create(f"audit_{entries}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=product_env(context, name), cwd=REPO, check=True)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    # Only the chain functions are needed: they import no models, so no django.setup() here.
    from audit_app.chain import GENESIS_HASH, HASHED_FIELDS, canonical_json, entry_hash

    previous, base = GENESIS_HASH, datetime(2026, 1, 1, tzinfo=UTC)
    columns = ["seq", "hash_version", "prev_hash", "entry_hash", "created_at", *HASHED_FIELDS]
    quoted = ", ".join(f'"{column}"' for column in columns)
    events = ("change.started", "change.applied", "lock.acquired", "lock.released", "change.failed")
    with psycopg.connect(context.pg.database_url(name)) as connection:
        with connection.cursor().copy(f"COPY audit_app_auditentry ({quoted}) FROM STDIN") as copy:
            for seq in range(1, entries + 1):
                fields = dict.fromkeys(HASHED_FIELDS, "")
                event = events[seq % len(events)]
                fields.update(
                    event=event, environment="prod" if seq % 3 else "staging", change_id=f"change-{seq % CHANGES}", stage="main",
                    order=f"{seq % CHANGES:05d}", target="app-db", state=event.split(".")[1].upper() if event.startswith("change.") else "",
                    run_id=str(uuid.UUID(int=seq // 10 + 1)), actor="svc:worker" if seq % 7 else "alice", actor_user_id=None,
                    host="bench", pid=1, fencing_token=seq // 10 + 1, duration_ms=1.25, details={"seq": seq},
                )  # fmt: skip
                created = base + timedelta(seconds=seq * 30)  # a million entries span about a year
                digest = entry_hash(seq, previous, created, fields)
                row = [seq, 1, previous, digest, created]
                row += [canonical_json(fields[n]) if n == "details" else fields[n] for n in HASHED_FIELDS]
                copy.write_row(row)
                previous = digest
        connection.execute(
            "UPDATE audit_app_chainhead SET seq = %s, entry_hash = %s, entry_id = (SELECT max(id) FROM audit_app_auditentry) WHERE id = 1",
            [entries, previous],
        )
        # The side index of subjects (audit_app.subjects), as the writer keeps it: these entries name
        # their target and change in their own columns.
        connection.execute("INSERT INTO audit_app_entrysubject (seq, target, change_id) SELECT seq, target, change_id FROM audit_app_auditentry")
    with psycopg.connect(context.pg.database_url(name), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE audit_app_auditentry")
        connection.execute("VACUUM ANALYZE audit_app_entrysubject")
    log(f"audit data: {entries:,} chained entries in {time.perf_counter() - started:.1f} s ({name})")
    return name


def audit_database(context: Context, *, entries: int = 1_000_000) -> str:
    """A fresh clone of the run's chained-trail database of ``entries`` entries; returns its name."""
    key = (id(context), entries)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _build(context, entries)
    return context.pg.database_create(f"audit_{entries}_clone", template=_TEMPLATES[key])
