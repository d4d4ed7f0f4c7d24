"""A migrated database holding a real hash-chained audit trail of N entries, built once per run.

The audit benchmarks (admin changelist, API list, export, verify) share it: the first caller builds
a template database (``manage.py migrate``, then the entries with ``COPY``, hashes computed the way
the product computes them, chain head set, ``ANALYZE``), later callers get a clone of it. Building a
million entries takes about a minute on two cores; the clone a few seconds.

    from bench.audit_data import audit_database
    name = audit_database(context, entries=1_000_000)          # a fresh clone, dropped at the end
    url = context.pg.database_url(name)

The ten-million-entry suite (``trail-10m``) cannot build its trail on every run: ``shared_trail``
builds it once as a database kept between runs, named by its entry count and a digest of what it is
made from (the migrations on disk, ``audit_app/chain.py``, this generator), made a read-only template
(``ALLOW_CONNECTIONS false``), and cloned for each run. A stale one (another digest) is dropped and
rebuilt; ``drop_shared_trails`` drops them all (``python -m bench.suites.trail_scale --drop-shared``). Before a
build, the free disk of PostgreSQL's data directory is checked against an estimate.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import REPO, BenchmarkError, Context, log

#: Distinct change ids in the generated trail: each has entries / CHANGES entries.
CHANGES = 5000
_TEMPLATES: dict[tuple[int, int], str] = {}
#: Bumped when the generated rows change: part of a shared trail's name.
GENERATOR_VERSION = 2
#: Shared trails: ``flk_trail_<entries>_<digest>`` (never the per-run prefix, so never dropped at a run's end).
SHARED_PREFIX = "flk_trail_"
#: A quarter (2026-01-01 to 2026-04-01): the span of a shared trail, whatever its size.
QUARTER = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
#: Bytes per entry on disk (table, indexes, side index of subjects; 966 measured on a 100,000-entry
#: trail with its empty schema): the estimate when no shared trail exists to measure.
BYTES_PER_ENTRY = 1000
#: Bytes per entry of the run's files in its scratch directory, at their largest at once: the
#: evidence pack twice (the product's copy and the output, 710 bytes an entry each) and a CSV of
#: the rows (330). Counted against the data directory's disk when the scratch directory shares it.
FILE_BYTES_PER_ENTRY = 1800
#: Headroom beyond the estimate: the WAL written while building and cloning.
DISK_MARGIN = 1.2


def product_env(context: Context, database: str) -> dict[str, str]:
    """The environment of a product process working on ``database`` (bytecode caches on)."""
    env = context.base_env()
    env.update(
        DATABASE_URL=context.pg.database_url(database).replace("postgresql://", "postgres://", 1),
        DJANGO_SETTINGS_MODULE="flamingock_site.settings",
        PYTHONPATH=str(REPO),
    )
    return env


def _build(context: Context, entries: int, *, name: str | None = None, span: tuple[datetime, datetime] | None = None) -> str:
    """Build the trail into ``name`` (a new database of this run if ``None``). Entries are 30 s
    apart from 2026-01-01, or spread evenly over ``span``."""
    name = name or context.pg.database_create(f"audit_{entries}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=product_env(context, name), cwd=REPO, check=True)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    # Only the chain functions are needed: they import no models, so no django.setup() here.
    from audit_app.chain import GENESIS_HASH, HASHED_FIELDS, canonical_json, entry_hash

    previous, base = GENESIS_HASH, (span or QUARTER)[0]
    step_us = (span[1] - span[0]) // timedelta(microseconds=1) // (entries + 1) if span else 30_000_000
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
                created = base + timedelta(microseconds=seq * step_us)  # 30 s apart: a million entries span about a year
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


# -- the shared trail of the ten-million-entry suite ------------------------------------------------


def schema_digest() -> str:
    """What a shared trail is made from: the audit app's migrations, the chain's code, this generator.
    The other apps' migrations are not in it: each clone is migrated before use
    (``shared_trail_clone``), so a new migration elsewhere does not rebuild tens of gigabytes."""
    digest = hashlib.sha256(f"generator {GENERATOR_VERSION}".encode())
    files = sorted(path for path in REPO.glob("audit_app/migrations/*.py") if not path.name.startswith("__"))
    for path in [*files, REPO / "audit_app" / "chain.py"]:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def shared_trail_name(entries: int) -> str:
    return f"{SHARED_PREFIX}{entries}_{schema_digest()}"


def _admin(context: Context) -> psycopg.Connection:
    return psycopg.connect(context.pg.database_url("postgres"), autocommit=True)


def _drop(admin: psycopg.Connection, name: str) -> None:
    admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true IS_TEMPLATE false')
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shared_trails(context: Context) -> list[tuple[str, int]]:
    """(name, bytes) of every shared trail on the server, complete or left half-built."""
    with _admin(context) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", [f"{SHARED_PREFIX}%"]).fetchall()
        sizes = []
        for (name,) in rows:
            # pg_database_size needs no connection to the database (one that refuses them is measured too).
            sizes.append((name, admin.execute("SELECT pg_database_size(%s)", [name]).fetchone()[0]))
    return sizes


def _entries_of(name: str) -> int:
    return int(name[len(SHARED_PREFIX) :].split("_")[0])


def data_directory_free(context: Context) -> tuple[str, int]:
    """PostgreSQL's data directory and the free bytes of its file system (the bench runs on the
    server's machine; a directory this user cannot see is measured at its nearest visible parent)."""
    with _admin(context) as admin:
        directory = Path(admin.execute("SHOW data_directory").fetchone()[0])
    probe = directory
    while probe != probe.parent:
        try:
            return str(directory), shutil.disk_usage(probe).free
        except OSError:
            probe = probe.parent
    return str(directory), shutil.disk_usage(probe).free


def disk_estimate(context: Context, entries: int) -> dict[str, int]:
    """Bytes of a trail of ``entries`` entries: bytes per entry measured on the largest complete
    shared trail already built, else ``BYTES_PER_ENTRY`` (measured on a 1,000,000-entry trail)."""
    built = [(size, _entries_of(name)) for name, size in shared_trails(context) if not name.endswith("_building")]
    largest = max(built, key=lambda item: item[1]) if built else None
    bytes_per_entry = largest[0] / largest[1] if largest else BYTES_PER_ENTRY
    return {"bytes_per_entry": int(bytes_per_entry), "trail": int(bytes_per_entry * entries)}


def disk_check(context: Context, entries: int, *, build: bool) -> dict[str, Any]:
    """Refuse (``BenchmarkError``, nothing built) when the free disk is below what the run needs:
    the run's clone of the trail, the template too when it is to be built, and the run's files
    (when the scratch directory is on the same file system), times ``DISK_MARGIN``."""
    estimate = disk_estimate(context, entries)
    directory, free = data_directory_free(context)
    files = FILE_BYTES_PER_ENTRY * entries
    try:
        shared_disk = os.stat(context.workdir).st_dev == os.stat(directory).st_dev
    except OSError:  # the data directory is not visible to this user: assume one disk
        shared_disk = True
    needed = int((estimate["trail"] * (2 if build else 1) + (files if shared_disk else 0)) * DISK_MARGIN)
    facts = {**estimate, "files": files, "needed": needed, "free": free, "directory": directory}
    if free < needed:
        raise BenchmarkError(
            f"not enough free disk for a trail of {entries:,} entries: {needed / 1e9:.1f} GB needed "
            f"({'the shared template and ' if build else ''}the run's clone, about {estimate['trail'] / 1e9:.1f} GB each at "
            f"{estimate['bytes_per_entry']} bytes per entry{', the run' + chr(39) + 's files ' + f'{files / 1e9:.1f} GB' if shared_disk else ''}, "
            f"x{DISK_MARGIN} for the WAL), {free / 1e9:.1f} GB free under {directory}. "
            "Free some space or drop the shared trails (python -m bench.suites.trail_scale --drop-shared)."
        )
    if not shared_disk:
        scratch_free = shutil.disk_usage(context.workdir).free
        if scratch_free < files:
            raise BenchmarkError(
                f"not enough free disk for the run's files: {files / 1e9:.1f} GB needed, {scratch_free / 1e9:.1f} GB free under {context.workdir}"
            )
    return facts


def drop_shared_trails(context: Context) -> list[str]:
    """Drop every shared trail; returns the names dropped."""
    names = [name for name, _ in shared_trails(context)]
    with _admin(context) as admin:
        for name in names:
            _drop(admin, name)
    return names


def shared_trail(context: Context, entries: int) -> tuple[str, dict[str, Any]]:
    """The shared read-only trail of ``entries`` entries spread over a quarter: built if missing
    (after the disk check), a stale one of the same size dropped first; returns its name and facts."""
    name = shared_trail_name(entries)
    others = [other for other, _ in shared_trails(context) if _entries_of(other) == entries and other != name]
    facts: dict[str, Any] = {"name": name, "entries": entries}
    with _admin(context) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            facts.update(built=False, disk=disk_check(context, entries, build=False))
            log(f"shared trail: reusing {name}")
            return name, facts
        for other in others:  # another schema or generator, or a build that was cut short
            _drop(admin, other)
            log(f"shared trail: dropped the stale {other}")
        facts["dropped_stale"] = others
        facts["disk"] = disk_check(context, entries, build=True)
        building = f"{name}_building"
        started = time.perf_counter()
        log(f"shared trail: building {entries:,} entries into {name} (free disk {facts['disk']['free'] / 1e9:.1f} GB)")
        admin.execute(f'CREATE DATABASE "{building}"')
        try:
            _build(context, entries, name=building, span=QUARTER)
        except BaseException:
            _drop(admin, building)
            raise
        # Complete: its final name, then a template that accepts no connection, so that nothing
        # writes to it (each run works on its clone).
        admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true')
        facts.update(built=True, build_s=round(time.perf_counter() - started, 1))
        facts["bytes"] = admin.execute("SELECT pg_database_size(%s)", [name]).fetchone()[0]
    return name, facts


def shared_trail_clone(context: Context, template: str) -> str:
    """This run's clone of a shared trail, dropped at the run's end. Copied file by file: PostgreSQL
    15's default strategy would write the whole trail to the WAL."""
    clone = f"flk_bench_{os.getpid()}_trail_{_entries_of(template)}_clone"
    started = time.perf_counter()
    with _admin(context) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)')
        strategy = " STRATEGY FILE_COPY" if int(admin.execute("SHOW server_version_num").fetchone()[0]) >= 150000 else ""
        admin.execute(f'CREATE DATABASE "{clone}" TEMPLATE "{template}"{strategy}')

    def drop() -> None:
        with _admin(context) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)')

    context.cleanups.callback(drop)
    log(f"shared trail: cloned {template} in {time.perf_counter() - started:.1f} s")
    # The template was migrated when it was built; the other apps may have migrations since.
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=product_env(context, clone), cwd=REPO, check=True)
    return clone
