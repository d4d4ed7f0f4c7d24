"""The engine for one member: the single-target executor with the member's lock, the member's
ledger (states keyed by member and change), the member's connection, and every entry naming the
member. The resolver and the strategies are the same for each member."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.conf import settings

from audit_app.services import member_change_states
from changes_app.engine.executor import Executor, strategies_for
from changes_app.pipeline.discovery import Pipeline
from changes_app.pipeline.plan import Plan, plan_build


def group_pipeline(pipeline: Pipeline, target: str) -> Pipeline:
    """The pipeline's changes aimed at group ``target``, in their stages and order."""
    stages = [replace(stage, changes=[change for change in stage.changes if change.target == target]) for stage in pipeline.stages]
    return replace(pipeline, stages=[stage for stage in stages if stage.changes])


class MemberExecutor(Executor):
    """Executes one member's child run of a fleet run."""

    def __init__(self, run, *, member: str, target, pipeline: Pipeline, **kwargs):
        super().__init__(run, pipeline=group_pipeline(pipeline, target.name), **kwargs)
        self.member = member
        self.targets[target.name] = target
        self.strategies = strategies_for(self.pipeline, self.targets)

    def pipeline_for(self, pipeline: Pipeline) -> Pipeline:
        return pipeline  # already the group's changes (group_pipeline)

    def audit(self, event: str, **kwargs) -> Any:
        return super().audit(event, member=self.member, **kwargs)

    def plan(self) -> Plan:
        return plan_build(
            pipeline=self.pipeline,
            states=member_change_states(member=self.member),
            environment=self.environment,
            strategies=self.strategies,
            out_of_order=settings.FLAMINGOCK_OUT_OF_ORDER,
            approval_needed=self.approval_needed,
        )
