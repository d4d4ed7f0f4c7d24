"""Fleet benchmark (issue 22): N PostgreSQL schemas x 5 DDL changes, the product's fleet run on real
Celery workers against django-tenants' ``migrate_schemas`` with its multiprocessing executor, the same
number of processes, in the same run, on the same server.

    .venv/bin/python bench/fleet.py --schemas 1000 --processes 2
    .venv/bin/python bench/fleet.py --schemas 200 --processes 1,2      # also the scaling from 1 to 2 workers
    .venv/bin/python bench/fleet.py --plan --members 100000 --changes 50   # the fleet plan on a synthetic ledger

Both sides apply the same 5 statements per tenant. The product also writes, per member and change,
two hash-chained audit entries (STARTED, APPLIED), the fence check, the marker row and the checksum;
django-tenants writes one ``django_migrations`` row. The peer is set up as its documentation says:
``django_tenants.postgresql_backend``, ``TenantSyncRouter``, a tenant model and a domain model in a
shared app, the migrations in a tenant app, ``migrate_schemas --shared`` once, then the timed
``migrate_schemas --tenant --executor=multiprocessing`` with ``TENANT_MULTIPROCESSING_MAX_PROCESSES``.
Schemas are created beforehand on both sides (``auto_create_schema = False`` for the peer), so only
the migrating is timed. Every database it creates is ``flk_bench_<pid>_...``, dropped at the end.

``--plan`` times ``fleet_plan`` alone (no workers, no peer) on a ledger of ``--members`` x ``--changes``
built with ``generate_series`` in a bench database, with its number of queries, and in the same run
the counting query as it was before (joined to the current members) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.pg import PostgresServer  # noqa: E402

STATEMENTS = [
    "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL)",
    "ALTER TABLE accounts ADD COLUMN plan text",
    "CREATE INDEX accounts_plan ON accounts (plan)",
    "CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts (id), total numeric)",
    "ALTER TABLE accounts ADD COLUMN created_at timestamptz DEFAULT now()",
]


def schemas_create(dsn: str, names: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        for index in range(0, len(names), 200):
            connection.execute("; ".join(f'CREATE SCHEMA "{name}"' for name in names[index : index + 200]))


# -- the product ----------------------------------------------------------------------------------------


def product_pipeline(root: Path, statements: list[str] = STATEMENTS) -> str:
    package = f"flk_fleet_bench_{uuid.uuid4().hex[:8]}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    for index, sql in enumerate(statements, 1):
        (root / package / f"{index:04d}_c.py").write_text(
            textwrap.dedent(f"""
                from changes_app.definitions import Change


                class C(Change):
                    id = "fleet-bench-{index}"
                    author = "bench"
                    target = "tenants"

                    def apply(self, cursor):
                        cursor.execute({sql!r})
            """).lstrip()
        )
    return package


DRIVER = """
import json, sys, time, django
django.setup()
from audit_app.services import Actor
from changes_app.fleets import services as fleets
from changes_app.models import FleetRun, FleetMemberRun, Run
concurrency = int(sys.argv[1])
fleets.members_discover(target="tenants")
started = time.perf_counter()
fleet = fleets.fleet_run_start(actor=Actor(name="bench", via="cli"), target="tenants", source="CLI", canary=1,
                               wave_size=100000, concurrency=concurrency, max_failures=1, discover=False)
while FleetRun.objects.filter(pk=fleet.pk, status="FINISHED").count() == 0:
    time.sleep(0.02)
wall = time.perf_counter() - started
fleet.refresh_from_db()
# Time inside the members' changes (the change's own statements, per its APPLIED entries' duration).
from audit_app.models import AuditEntry
from django.db.models import Sum
changes_ms = AuditEntry.objects.filter(run_id__in=FleetMemberRun.objects.filter(fleet_run=fleet).values("run_id"), event="change.applied").aggregate(s=Sum("duration_ms"))["s"] or 0
members = FleetMemberRun.objects.filter(fleet_run=fleet).count()
runs = list(Run.objects.filter(pk__in=FleetMemberRun.objects.filter(fleet_run=fleet).values("run_id")).values_list("started_at", "finished_at"))
member_ms = sum((end - begin).total_seconds() for begin, end in runs) * 1000 / len(runs)
print(json.dumps({"wall_s": wall, "result": fleet.result, "members": members, "changes_ms": changes_ms, "member_run_ms": member_ms}))
"""


def product_run(server: PostgresServer, *, schemas: int, processes: int, redis_url: str, scratch: Path) -> dict:
    audit = server.database_create("fleet_audit")
    target = server.database_create("fleet_tenants")
    names = [f"tenant_{index:05d}" for index in range(schemas)]
    schemas_create(server.database_url(target), names)
    package = product_pipeline(scratch)
    prefix = f"flk-bench-fleet-{os.getpid()}-{processes}:"
    targets = {"tenants": {"kind": "postgres", "dsn": server.database_url(target), "group": {"schemas": names}}}
    env = {
        **os.environ,
        "DATABASE_URL": server.database_url(audit).replace("postgresql://", "postgres://"),
        "FLAMINGOCK_STAGES": f"bench={package}",
        "FLAMINGOCK_DISCOVER_APPS": "0",
        "FLAMINGOCK_TARGETS_JSON": json.dumps(targets),
        "PYTHONPATH": os.pathsep.join([str(scratch), str(REPO)]),
        "REDIS_URL": redis_url,
        "FLAMINGOCK_BROKER_KEYPREFIX": prefix,
        "FLAMINGOCK_QUEUE": f"flk-bench-fleet-{os.getpid()}",
        "FLAMINGOCK_LOCK_BACKEND": "database",
        "DJANGO_SETTINGS_MODULE": "flamingock_site.settings",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "--skip-checks", "-v", "0"], env=env, cwd=REPO, check=True)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                *(["-m", "cProfile", "-o", f"{os.environ['FLEET_BENCH_PROFILE']}.{index}"] if os.environ.get("FLEET_BENCH_PROFILE") else []),
                "-m",
                "celery",
                "-A",
                "flamingock_site",
                "worker",
                "--pool=solo",
                "-n",
                f"bench{index}@fleet",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for index in range(processes)
    ]
    try:
        time.sleep(4)  # the workers start and connect
        # Twice as many members in flight as processes: a worker finds its next member queued when it ends one.
        out = subprocess.run([sys.executable, "-c", DRIVER, str(2 * processes)], env=env, cwd=REPO, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        server.database_drop(audit)
        server.database_drop(target)
    members = result["members"]
    # Dispatch overhead per member: wall time x processes, minus the changes' own time, per member.
    result["overhead_ms_per_member"] = (result["wall_s"] * 1000 * processes - result["changes_ms"]) / members
    return result


# -- the peer: django-tenants ---------------------------------------------------------------------------


PEER_SETTINGS = """
import os
SECRET_KEY = "bench"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DATABASES = {{"default": {{"ENGINE": "django_tenants.postgresql_backend", "NAME": {name!r}, "USER": "postgres", "HOST": {host!r}, "PORT": {port!r}}}}}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
SHARED_APPS = ["django_tenants", "customers", "django.contrib.contenttypes"]
TENANT_APPS = ["benchtenant"]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
MIDDLEWARE = ["django_tenants.middleware.main.TenantMainMiddleware"]
ROOT_URLCONF = "peer_urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TENANT_MULTIPROCESSING_MAX_PROCESSES = int(os.environ.get("PEER_PROCESSES", "2"))
TENANT_MULTIPROCESSING_CHUNKS = 2
"""

CUSTOMERS_MODELS = """
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)
    auto_create_schema = False


class Domain(DomainMixin):
    pass
"""


def peer_project(root: Path, database_url: str) -> Path:
    project = root / "peer"
    project.mkdir(parents=True)
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    (project / "peer_settings.py").write_text(
        PEER_SETTINGS.format(name=info["dbname"], host=info.get("host", "127.0.0.1"), port=str(info.get("port", 5432)))
    )
    (project / "peer_urls.py").write_text("urlpatterns = []\n")
    (project / "manage.py").write_text(
        "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'peer_settings')\n"
        "from django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n"
    )
    customers = project / "customers"
    (customers / "migrations").mkdir(parents=True)
    (customers / "__init__.py").write_text("")
    (customers / "migrations" / "__init__.py").write_text("")
    (customers / "models.py").write_text(CUSTOMERS_MODELS)
    tenant = project / "benchtenant" / "migrations"
    tenant.mkdir(parents=True)
    (project / "benchtenant" / "__init__.py").write_text("")
    (tenant / "__init__.py").write_text("")
    previous = None
    for index, sql in enumerate(STATEMENTS, 1):
        name = f"{index:04d}_c"
        dependencies = f"[('benchtenant', {previous!r})]" if previous else "[]"
        (tenant / f"{name}.py").write_text(
            f"from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
            f"    dependencies = {dependencies}\n    operations = [migrations.RunSQL({sql!r})]\n"
        )
        previous = name
    return project


def peer_run(server: PostgresServer, *, schemas: int, processes: int, scratch: Path) -> dict:
    database = server.database_create("fleet_peer")
    url = server.database_url(database)
    project = peer_project(scratch / f"p{processes}", url)
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}, "PEER_PROCESSES": str(processes)}
    env["PYTHONPATH"] = str(project)
    try:
        subprocess.run([sys.executable, "manage.py", "makemigrations", "customers", "-v", "0"], env=env, cwd=project, check=True)
        subprocess.run([sys.executable, "manage.py", "migrate_schemas", "--shared", "-v", "0"], env=env, cwd=project, check=True, capture_output=True)
        names = [f"tenant_{index:05d}" for index in range(schemas)]
        schemas_create(url, names)
        with psycopg.connect(url, autocommit=True) as connection:
            with connection.cursor() as cursor:
                cursor.executemany("INSERT INTO customers_client (schema_name, name) VALUES (%s, %s)", [(name, name) for name in names])
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "manage.py", "migrate_schemas", "--tenant", "--executor=multiprocessing", "-v", "0"],
            env=env, cwd=project, check=True, capture_output=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as connection:
            applied = connection.execute(f'SELECT count(*) FROM "{names[-1]}".django_migrations WHERE app = %s', ["benchtenant"]).fetchone()[0]
    finally:
        server.database_drop(database)
    return {"wall_s": wall, "applied_in_last_schema": applied}


# -- the fleet plan on a synthetic ledger -----------------------------------------------------------------


PLAN_DRIVER = """
import json, os, resource, sys, time, django
django.setup()
from django.db import connection
from django.test.utils import CaptureQueriesContext
from changes_app.fleets import services as fleets
from changes_app.fleets.executor import group_pipeline
from changes_app.models import FleetMember
from audit_app.models import MemberChangeState
from changes_app.pipeline.discovery import pipeline_load
members, repeat = int(sys.argv[1]), int(sys.argv[2])
changes = [change for stage in group_pipeline(pipeline_load(), "tenants").stages for change in stage.changes]
loaded = time.perf_counter()
with connection.cursor() as cursor:
    cursor.execute(
        f"INSERT INTO {FleetMember._meta.db_table} (target, name, discovered_at, removed_at) "
        "SELECT 'tenants', 'tenant_' || lpad(g::text, 6, '0'), now(), CASE WHEN g %% 1000 = 999 THEN now() END "
        "FROM generate_series(0, %s - 1) g", [members])
    # Every member has a state for every change but the last, which half the members have not reached
    # (an in-progress rollout); 1 in 100 FAILED, 1 in 200 STARTED, 1 in 50 an older checksum, the rest
    # APPLIED with the code's checksum.
    cursor.execute("CREATE TEMP TABLE bench_changes (k integer, change_id text, checksum text)")
    cursor.executemany("INSERT INTO bench_changes VALUES (%s, %s, %s)", [(k, c.id, c.checksum) for k, c in enumerate(changes)])
    cursor.execute(
        f"INSERT INTO {MemberChangeState._meta.db_table} (member, change_id, state, checksum, entry_id, run_id, stage, \\"order\\", target, applied_count, updated_at) "
        "SELECT 'tenant_' || lpad(g::text, 6, '0'), c.change_id, "
        "CASE WHEN g %% 100 = 7 THEN 'FAILED' WHEN g %% 200 = 3 THEN 'STARTED' ELSE 'APPLIED' END, "
        "CASE WHEN g %% 50 = 11 THEN repeat('0', 64) ELSE c.checksum END, g * 64 + c.k, NULL, 'bench', lpad(c.k::text, 4, '0'), 'tenants', 1, now() "
        "FROM bench_changes c, generate_series(0, %s - 1) g WHERE c.k < %s OR g < %s / 2",
        [members, len(changes) - 1, members])
    cursor.execute(f"ANALYZE {FleetMember._meta.db_table}")
    cursor.execute(f"ANALYZE {MemberChangeState._meta.db_table}")
    cursor.execute(f"SELECT count(*) FROM {MemberChangeState._meta.db_table}")
    rows = cursor.fetchone()[0]
load_s = time.perf_counter() - loaded
fleets.fleet_plan(target="tenants", limit=50)  # warm: the pipeline, the plan, the server's caches
from django.db.models import Count
def joined():
    # The counts as fleet_plan read them before (a join to the group's current members), for an A/B in this run.
    current = FleetMember.objects.filter(target="tenants", removed_at=None).values("name")
    return list(MemberChangeState.objects.filter(change_id__in=[c.id for c in changes], member__in=current)
                .values("change_id", "state", "checksum").annotate(n=Count("id")).order_by())
timings, reference = [], []
for _ in range(repeat):
    cpu, wall = time.process_time(), time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        plan = fleets.fleet_plan(target="tenants", offset=members // 2, limit=50)
    timings.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "queries": len(queries.captured_queries)})
    wall = time.perf_counter()
    joined()
    reference.append({"joined_counts_wall_s": time.perf_counter() - wall})
with CaptureQueriesContext(connection) as small:
    fleets.fleet_plan(target="tenants", offset=0, limit=1)
print(json.dumps({"members": members, "changes": len(changes), "ledger_rows": rows, "load_s": load_s, "timings": timings, "reference": reference,
                  "queries_page_of_1": len(small.captured_queries), "plan_members": plan["members"],
                  "actions_first_change": plan["changes"][0]["actions"], "actions_last_change": plan["changes"][-1]["actions"],
                  "page": len(plan["page"]["members"])}))
"""


def plan_run(server: PostgresServer, *, members: int, changes: int, repeat: int, scratch: Path) -> dict:
    """The fleet plan of a group of ``members`` members x ``changes`` changes on a synthetic ledger
    (built with ``generate_series`` in a bench database): its time and its number of queries."""
    audit = server.database_create("fleet_plan")
    package = product_pipeline(scratch, [f"SELECT {index}" for index in range(changes)])
    targets = {"tenants": {"kind": "postgres", "dsn": server.database_url(audit), "group": {"schemas_query": "SELECT nspname FROM pg_namespace"}}}
    env = {
        **os.environ,
        "DATABASE_URL": server.database_url(audit).replace("postgresql://", "postgres://"),
        "FLAMINGOCK_STAGES": f"bench={package}",
        "FLAMINGOCK_DISCOVER_APPS": "0",
        "FLAMINGOCK_TARGETS_JSON": json.dumps(targets),
        "PYTHONPATH": os.pathsep.join([str(scratch), str(REPO)]),
        "FLAMINGOCK_LOCK_BACKEND": "database",
        "DJANGO_SETTINGS_MODULE": "flamingock_site.settings",
    }
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--skip-checks", "-v", "0"], env=env, cwd=REPO, check=True)
        out = subprocess.run(
            [sys.executable, "-c", PLAN_DRIVER, str(members), str(repeat)], env=env, cwd=REPO, check=True, capture_output=True, text=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.database_drop(audit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="only the fleet plan on a synthetic ledger (--members x --changes)")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--schemas", type=int, default=1000)
    parser.add_argument("--processes", default="2", help="comma-separated worker process counts (e.g. 1,2)")
    parser.add_argument("--pg", default=os.environ.get("FLAMINGOCK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("FLAMINGOCK_BENCH_REDIS", "redis://127.0.0.1:6379/4"))
    parser.add_argument("--output", help="write the results as JSON here")
    options = parser.parse_args()
    server = PostgresServer(options.pg)
    scratch = Path(tempfile.mkdtemp(prefix="flk_fleet_bench_"))
    results = {"schemas": options.schemas, "statements": len(STATEMENTS), "runs": []}
    if options.plan:
        try:
            results = {"plan": plan_run(server, members=options.members, changes=options.changes, repeat=options.repeat, scratch=scratch)}
            results["load_average"] = list(os.getloadavg())
            print(json.dumps(results), flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            server.close()
        if options.output:
            Path(options.output).write_text(json.dumps(results, indent=2))
        return
    try:
        for processes in [int(p) for p in options.processes.split(",")]:
            product = product_run(server, schemas=options.schemas, processes=processes, redis_url=options.redis, scratch=scratch)
            peer = peer_run(server, schemas=options.schemas, processes=processes, scratch=scratch)
            row = {"processes": processes, "product": product, "django_tenants": peer, "ratio_peer_over_product": peer["wall_s"] / product["wall_s"]}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        server.close()
    if options.output:
        Path(options.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
