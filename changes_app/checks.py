"""A Django system check that reports every pipeline problem at startup, with file and line."""

from django.core.checks import Error, Tags, register

from changes_app.pipeline.discovery import pipeline_discover


@register(Tags.compatibility, "flamingock")
def pipeline_check(app_configs=None, **kwargs):
    return [
        Error(str(problem), hint=None, obj=problem.path or "flamingock", id=f"flamingock.{problem.code}") for problem in pipeline_discover().problems
    ]
