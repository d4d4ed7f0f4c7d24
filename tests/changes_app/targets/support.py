"""Helpers of the target-system tests: runs, the ledger of one change, crashes in a child process."""

from __future__ import annotations

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.locks.backends import lock_backend
from changes_app.models import Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.guidance import issue_details
from changes_app.targets.base import target_systems
from tests.conftest import manage


def run_pipeline() -> Run:
    return services.run_start(actor=cli_actor(), source=Run.Source.CLI)


def undo(change_id: str) -> Run:
    return services.change_undo(change_id=change_id, actor=cli_actor(), reason="tests undo it", source=Run.Source.CLI)


def results(run: Run) -> dict[str, str]:
    return {row["change_id"]: row["result"] for row in run.results}


def states(change_id: str) -> list[str]:
    """The change's states, oldest first."""
    return list(AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("id").values_list("state", flat=True))


def last_entry(change_id: str) -> AuditEntry:
    return AuditEntry.objects.filter(change_id=change_id).exclude(state="").order_by("-id").first()


def next_action(change_id: str) -> str:
    return services.pipeline_plan().item(change_id).action.value


def issue(change_id: str) -> dict:
    return issue_details(services.pipeline_plan().item(change_id))


def verify(change_id: str) -> bool:
    """The change's verify probe against the live target, as reconciliation and drift checks run it."""
    change = pipeline_load().by_id[change_id]
    with target_systems()[change.target].session(atomic=False) as session:
        return change.verify(session)


def crash_run(env_for, boundary: str, change_id: str) -> None:
    """``flamingock run`` in a child process that kills itself (SIGKILL) at ``boundary`` of the change;
    then the dead holder's lock is freed so that the test goes on at once."""
    child = manage("flamingock", "run", "--json", env=env_for(FLAMINGOCK_CRASH_AT=f"{boundary}:{change_id}"))
    assert child.returncode == -9, f"the child was meant to die at {boundary}: exit {child.returncode}\n{child.stdout}\n{child.stderr}"
    assert lock_backend().force_release() is not None
