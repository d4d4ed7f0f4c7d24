"""Celery tasks: primary keys in, one service call, nothing else."""

from flamingock_site.celery import app


@app.task(name="flamingock.run_execute", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_execute_task(run_id: str) -> str:
    """Execute a queued run (a pipeline, an undo, a fix, a skip...). A duplicate delivery finds the
    run already claimed and does nothing."""
    from .faults import crashpoint
    from .services import run_execute

    status = run_execute(run_id=run_id).status
    crashpoint("before_ack")
    return status


@app.task(name="flamingock.runs_reap", ignore_result=True)
def runs_reap_task() -> dict:
    """Abort runs whose worker died; queue again runs the broker lost."""
    from .services import runs_reap

    return runs_reap()


@app.task(name="flamingock.requests_expire", ignore_result=True)
def requests_expire_task() -> list[int]:
    """Expire requests past their expiry; settle those whose run ended."""
    from .approvals import requests_expire

    return requests_expire()


@app.task(name="flamingock.drift_check", ignore_result=True)
def drift_check_task(kind: str = "scheduled") -> dict:
    """Definition and operational drift (every 5 minutes by default); queues overdue webhook retries."""
    from .drift import drift_check
    from .notifications_drift import webhooks_due

    report = drift_check(kind=kind)
    for delivery_id in webhooks_due():
        webhook_deliver_task.apply_async(args=[delivery_id])
    return {"checks": report.checks, "seen": len(report.seen), "opened": len(report.opened), "resolved": len(report.resolved)}


@app.task(name="flamingock.drift_check_live", ignore_result=True)
def drift_check_live_task() -> dict:
    """Live drift: every applied change's verify probe against its target (hourly by default)."""
    return drift_check_task(kind="live")


@app.task(name="flamingock.webhook_deliver", ignore_result=True)
def webhook_deliver_task(delivery_id: int) -> None:
    """One attempt of a webhook delivery; a failure queues the next one after its backoff."""
    from .notifications_drift import webhook_deliver

    wait = webhook_deliver(delivery_id=delivery_id)
    if wait is not None:
        webhook_deliver_task.apply_async(args=[delivery_id], countdown=wait)
