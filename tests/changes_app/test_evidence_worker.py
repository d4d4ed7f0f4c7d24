"""An evidence pack is made by a real Celery worker process (issue 23): asked for by the service, the
row shows the worker's progress while it writes, then the pack, which verifies offline, and its
``evidence.generated`` entry."""

from __future__ import annotations

import base64
import time
from datetime import timedelta

import pytest

from audit_app.evidence.offline import verify_pack
from audit_app.models import AuditEntry
from audit_app.signing import public_key_hex, signing_key
from changes_app.governance.roles import COMPLIANCE_OFFICER
from changes_app.models import EvidencePack
from changes_app.services.evidence import evidence_request
from tests.audit_app.evidence.builder import Q1_END, Q1_START, TrailBuilder, quarter_clean
from tests.support.governance import person
from tests.support.workers import Broker, workers_start, workers_stop

KEY = base64.b64encode(bytes(range(1, 33))).decode()
#: Entries in the period beyond the quarter's own: enough for the worker to report progress midway.
FILLER = 30_000


@pytest.fixture
def broker(unique):
    used = Broker(unique)
    yield used
    used.cleanup()


def test_a_worker_makes_the_pack_reporting_progress_and_the_pack_verifies(subprocess_env, broker, settings, tmp_path, unique, monkeypatch):
    monkeypatch.setenv("FLAMINGOCK_AUDIT_SIGNING_KEY", KEY)
    settings.FLAMINGOCK_EVIDENCE_DIR = tmp_path / "evidence"
    builder = TrailBuilder()
    quarter_clean(builder)
    for number in range(FILLER):
        builder.add("lock.acquired", Q1_START + timedelta(days=50, seconds=number), environment=settings.FLAMINGOCK_ENVIRONMENT)
    builder.save()
    officer = person(f"carla-{unique}", COMPLIANCE_OFFICER)
    env = subprocess_env(
        **broker.env(),
        FLAMINGOCK_AUDIT_SIGNING_KEY=KEY,
        FLAMINGOCK_EVIDENCE_DIR=str(settings.FLAMINGOCK_EVIDENCE_DIR),
        FLAMINGOCK_ENVIRONMENT=settings.FLAMINGOCK_ENVIRONMENT,
        FLAMINGOCK_DISCOVER_APPS="0",
    )
    workers = workers_start([f"evidence-{unique}@host-{unique}"], env_for=lambda name: env, log_dir=tmp_path / "workers")
    try:
        with broker.publishing():
            pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END)
        seen, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            row = EvidencePack.objects.values("status", "progress", "total").get(pk=pack.pk)
            seen.append((row["status"], row["progress"], row["total"]))
            if row["status"] in ("DONE", "FAILED"):
                break
            time.sleep(0.005)
    finally:
        workers_stop(workers)
    pack.refresh_from_db()
    assert pack.status == "DONE", f"{pack.error}\n{workers[0].log[-3000:]}"
    midway = [progress for status, progress, total in seen if status == "RUNNING" and total and 0 < progress < total]
    assert midway, f"no progress seen while the worker ran: {sorted(set(seen))[:20]}"
    assert pack.progress == pack.total == AuditEntry.objects.filter(created_at__gte=Q1_START, created_at__lt=Q1_END).count()
    assert verify_pack(settings.FLAMINGOCK_EVIDENCE_DIR / pack.file_path, public_key=public_key_hex(signing_key())).ok
    assert AuditEntry.objects.get(event="evidence.generated").details["manifest_sha256"] == pack.manifest_sha256
