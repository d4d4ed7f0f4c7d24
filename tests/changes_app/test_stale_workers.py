"""A stale worker never judges (docs/semantics.md, Workers; docs/reliability.md, "Workers know
their code"), proven with two real Celery workers on different code.

The stale worker was started before a deploy: its change files are the old ones (another
directory on its ``PYTHONPATH``, the same package name) and it lacks the stage the deploy added.
Its old code would say the edited change is not drifted (and resolve the checksum finding) and
that the pipeline has nothing to do ("already applied"). It must hand both tasks back; with only
it running, the run ends ``no_current_worker`` and a ``worker.stale`` finding names it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.drift.checks import drift_check
from changes_app.governance.identity import cli_actor
from changes_app.models import Finding, Run, Worker
from changes_app.services.workers import NO_CURRENT_WORKER
from tests.conftest import REPO
from tests.support.workers import Broker, wait_for, workers_start, workers_stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.slow]

#: Short bounds for the workers (a settings module on their path): 4 hand-backs, 1.5 s apart.
HANDBACKS, COUNTDOWN = 4, 1.5
WORKER_SETTINGS = f"""
from flamingock_site.settings import *  # noqa: F403

FLAMINGOCK_WORKER_HEARTBEAT_SECONDS = 0.5
FLAMINGOCK_WORKER_LIVE_SECONDS = 5
FLAMINGOCK_WORKER_HANDBACKS = {HANDBACKS}
FLAMINGOCK_WORKER_HANDBACK_COUNTDOWN = {COUNTDOWN}
"""


def journal_change(change_id: str, extra: str = "") -> str:
    return f"""
        from changes_app.definitions import Change


        class Noted(Change):
            id = "{change_id}"
            author = "tests"
            target = "journal"

            def apply(self, journal, context):
                journal.write(kind="effect", change=context.change_id, pid=__import__("os").getpid())
        {extra}
    """


def drift_task(broker: Broker, kind: str) -> str:
    from changes_app.tasks import drift_check_task

    with broker.publishing():
        return drift_check_task.apply_async(kwargs={"kind": kind}).id


def test_a_stale_worker_hands_back_and_never_judges_the_current_worker_runs_it(make_pipeline, settings, subprocess_env, journal, tmp_path, unique):
    settings.FLAMINGOCK_ENVIRONMENT = environment = f"workers-{unique}"
    edited, added = f"edited-{unique}", f"added-{unique}"
    # Release 1, applied; a worker started then keeps its code (a copy of the stage's package).
    make_pipeline({"main": {"0001_edited.py": journal_change(edited)}})
    assert services.run_start(actor=cli_actor(), source=Run.Source.CLI).status == Run.Status.SUCCEEDED
    main_stage = settings.FLAMINGOCK_STAGES[0]
    package = main_stage.split("=", 1)[1]
    old_root = tmp_path / "release-1"
    shutil.copytree(tmp_path / "pipelines" / package, old_root / package)
    # Release 2: the change is edited (definition drift) and a stage is added; the deploy records it.
    current = make_pipeline(
        {"main": {"0001_edited.py": journal_change(edited, extra="# edited after apply")}, "extra": {"0001_added.py": journal_change(added)}}
    )
    assert services.pipeline_current_record(recorded_by="deploy").digest == current.digest
    drift_check(kind="definition")
    checksum = Finding.objects.get(kind=Finding.Kind.CHECKSUM_MISMATCH, change_id=edited)
    assert checksum.status == Finding.Status.OPEN and checksum.times_seen == 1

    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / f"flk_workers_settings_{unique}.py").write_text(WORKER_SETTINGS)
    broker = Broker(f"workers-{unique}")
    base = {**broker.env(), "FLAMINGOCK_ENVIRONMENT": environment, "DJANGO_SETTINGS_MODULE": f"flk_workers_settings_{unique}"}
    stale_name, current_name = f"stale-{unique}@host-stale-{unique}", f"current-{unique}@host-current-{unique}"
    paths = {
        stale_name: os.pathsep.join([str(old_root), str(tmp_path / "settings"), str(REPO)]),
        current_name: os.pathsep.join([str(tmp_path / "pipelines"), str(tmp_path / "settings"), str(REPO)]),
    }
    stages = {stale_name: main_stage, current_name: ",".join(settings.FLAMINGOCK_STAGES)}

    def env_for(name: str) -> dict[str, str]:
        return subprocess_env(**base, PYTHONPATH=paths[name], FLAMINGOCK_STAGES=stages[name], FLAMINGOCK_HOSTNAME=name.split("@")[1])

    started = time.monotonic()
    stale, current_worker = workers_start([stale_name, current_name], env_for=env_for, log_dir=tmp_path / "workers")
    try:
        # Only the stale worker consumes: the current one is paused (its last poll of the queue times out first).
        os.kill(current_worker.pid, signal.SIGSTOP)
        time.sleep(1.5)
        rows = {row.name: row for row in Worker.objects.filter(environment=environment)}
        assert rows[stale_name].digest != current.digest and rows[current_name].digest == current.digest
        assert {view.worker.name: view.code for view in services.workers_list()} == {stale_name: "stale", current_name: "current"}

        # 1. Only a stale worker: it hands the run and the drift check back, then gives them up.
        with broker.publishing():
            lonely = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
        lonely_check = drift_task(broker, "definition")
        wait_for(lambda: Run.objects.get(pk=lonely.id).finished, timeout=30, interval=0.2, what="the run to end")
        wait_for(lambda: f"Task flamingock.drift_check[{lonely_check}] succeeded" in stale.log, timeout=30, what="the drift check given up")
        lonely.refresh_from_db()
        assert lonely.status == Run.Status.ABORTED, (lonely.status_reason, stale.log[-3000:])
        assert lonely.status_reason.startswith(f"{NO_CURRENT_WORKER}: no worker runs pipeline {environment}")
        assert stale_name in lonely.status_reason
        assert stale.received(lonely.task_id) == HANDBACKS + 1
        assert not AuditEntry.objects.filter(run_id=lonely.id, event="run.started").exists()
        stale_finding = Finding.objects.get(kind=Finding.Kind.WORKER_STALE, environment=environment)
        assert stale_finding.status == Finding.Status.OPEN and stale_name in stale_finding.summary
        assert stale_finding.last_evidence["worker"] == stale_name
        checksum.refresh_from_db()
        assert (checksum.status, checksum.times_seen) == (Finding.Status.OPEN, 1), "the stale worker judged the checksum finding"

        # 2. Both: the stale worker takes the run first and hands it back; the current one runs it.
        with broker.publishing():
            handed = services.run_queue(actor=cli_actor(), source=Run.Source.CLI)
        handed_check = drift_task(broker, "scheduled")
        wait_for(lambda: stale.received(handed.task_id) >= 1, timeout=15, what="the stale worker to take the run")
        os.kill(current_worker.pid, signal.SIGCONT)
        wait_for(lambda: Run.objects.get(pk=handed.id).finished, timeout=30, interval=0.2, what="the handed-back run")
        wait_for(
            lambda: f"Task flamingock.drift_check[{handed_check}] succeeded" in current_worker.log + stale.log, timeout=30, what="the drift check"
        )
    finally:
        workers_stop([stale, current_worker])
        broker.cleanup(f"pipeline:{environment}")
    elapsed = time.monotonic() - started

    handed.refresh_from_db()
    ran = AuditEntry.objects.get(run_id=handed.id, event="run.started")
    assert (ran.host, ran.pid) == (current_name.split("@")[1], current_worker.pid), stale.log[-3000:]
    assert handed.pipeline_digest == current.digest
    results = {result["change_id"]: result["result"] for result in handed.results}
    assert results[added] == "APPLIED", handed.results
    # Release 1 would have said ALREADY_APPLIED; release 2 sees the definition drift and blocks the stage.
    assert (results[edited], handed.status) == ("BLOCKED", Run.Status.BLOCKED), (handed.status_reason, handed.results)
    assert AuditEntry.objects.get(change_id=added, state="APPLIED").pid == current_worker.pid
    # The stale worker never wrote a change's state, never started a run, never resolved a finding.
    assert not AuditEntry.objects.filter(pid=stale.pid).exclude(state="").exists()
    assert not AuditEntry.objects.filter(pid=stale.pid, event__in=["run.started", "drift.resolved"]).exists()
    assert journal.count(kind="effect", change=added) == 1 and journal.count(kind="effect", change=edited) == 1
    checksum.refresh_from_db()
    assert checksum.status == Finding.Status.OPEN
    if f"Task flamingock.drift_check[{handed_check}] succeeded" in current_worker.log:
        assert checksum.times_seen == 2  # the current worker judged it: still true
    print(f"\nstale and current workers: {elapsed:.1f} s")
