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
