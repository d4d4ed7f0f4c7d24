"""A Django system check that reports every pipeline problem at startup, with file and line."""

from django.core.checks import Error, Tags, register


@register(Tags.compatibility, "flamingock")
def pipeline_check(app_configs=None, **kwargs):
    from .discovery import pipeline_discover

    return [
        Error(str(problem), hint=None, obj=problem.path or "flamingock", id=f"flamingock.{problem.code}") for problem in pipeline_discover().problems
    ]
