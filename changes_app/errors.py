"""The refusals every layer raises: each carries a clear message, and nothing was changed."""

from __future__ import annotations

from audit_app.redaction import redact


class FlamingockError(Exception):
    """A refusal with a clear message; nothing was changed."""


class PipelineInvalid(FlamingockError):
    def __init__(self, pipeline):
        self.problems = pipeline.problems
        super().__init__(f"the pipeline has {len(pipeline.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in pipeline.problems))


class ActionRefused(FlamingockError):
    pass


class NotFound(FlamingockError):
    pass


class RequestRefused(ActionRefused):
    """A request cannot be made or moved as asked; nothing was changed."""


class RequestDuplicate(RequestRefused):
    pass


class RequestNotPending(RequestRefused):
    pass


class RequestExpired(RequestRefused):
    pass


class RequestStale(RequestRefused):
    """The change was edited (or re-baselined) after the request: its approval no longer matches."""


class PolicyInvalid(RequestRefused):
    pass


def typed_text(text: str | None) -> str:
    """A free text a person typed (a reason, a comment), stripped and with every secret masked.

    The one choke point: what it returns is what is stored, mailed, logged and shown, so a token
    or a password pasted by mistake never reaches a row or the append-only trail
    (docs/compliance.md, "Redaction").
    """
    return redact((text or "").strip())


def require_reason(reason: str, *, error: type[FlamingockError] = ActionRefused) -> str:
    """The reason a person gave, stripped and redacted (:func:`typed_text`); refused when there is none."""
    if not reason or not reason.strip():
        raise error("a reason is required")
    return typed_text(reason)
