"""``requests``, ``cancel``, ``approve`` and ``reject``: the requests of governed actions."""

from __future__ import annotations

from changes_app import services
from changes_app.cli import parser
from changes_app.cli.output import EXIT_OK, Output, table
from changes_app.governance.identity import cli_actor
from changes_app.models import ChangeRequest
from changes_app.services.representations import request_data


def _emit(out: Output, request: ChangeRequest, text: str) -> int:
    out.emit(lambda: request_data(request), text)
    return EXIT_OK


def listing(out: Output, options) -> int:
    actor = cli_actor()
    found = services.requests_awaiting(actor=actor) if options["awaiting_me"] else services.requests_visible(actor=actor)
    if options["mine"]:
        found = found.filter(requester_id=actor.user_id) if actor.user_id is not None else found.filter(requester_id=None, requester_name=actor.name)
    found = list(found.prefetch_related("approvals")[: options["limit"]])
    rows = [
        [
            r.pk,
            r.kind,
            r.change_id,
            r.target_system.name,
            r.status,
            f"{sum(1 for a in r.approvals.all() if a.decision == 'APPROVE')}/{r.required_approvals}",
            r.requester_name,
            f"{r.expires_at:%Y-%m-%d %H:%M}",
            r.reason[:50],
        ]
        for r in found
    ]
    out.emit(
        lambda: [request_data(r) for r in found],
        table(rows, ["ID", "KIND", "CHANGE", "TARGET", "STATUS", "APPROVALS", "REQUESTER", "EXPIRES (UTC)", "REASON"]) if rows else "no requests",
    )
    return EXIT_OK


def cancel(out: Output, options) -> int:
    request = services.request_cancel(request_id=parser.request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"])
    return _emit(out, request, f"request #{request.pk}: cancelled")


def approve(out: Output, options) -> int:
    request = services.request_approve(
        request_id=parser.request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"], inline=True
    )
    if request.run is not None:
        return out.run(request.run, request=request)
    if request.kind == ChangeRequest.Kind.REVIEW and request.status == ChangeRequest.Status.APPROVED:
        return _emit(out, request, f"break-glass review #{request.pk}: approved; the review is complete")
    if request.status == ChangeRequest.Status.APPROVED:
        return _emit(out, request, f"request #{request.pk}: approved; the next run applies {request.change_id}")
    count = request.approvals.filter(decision="APPROVE").count()
    return _emit(out, request, f"request #{request.pk}: approval recorded ({count} of {request.required_approvals})")


def reject(out: Output, options) -> int:
    request = services.request_reject(request_id=parser.request_id(options["request_id"]), actor=cli_actor(), comment=options["comment"])
    return _emit(out, request, f"request #{request.pk}: rejected")
