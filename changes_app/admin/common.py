"""What every admin page of the product shares: badges, read-only admins, wrapped views."""

from functools import partial

from django.utils.html import format_html

from audit_app.admin import ReadOnlyMixin

__all__ = ["ReadOnlyMixin", "admin_view", "badge", "state_badge"]

STATE_COLOURS = {
    "APPLIED": "#2e7d32",
    "MANUAL_MARKED_AS_APPLIED": "#2e7d32",
    "SKIPPED": "#757575",
    "STARTED": "#ef6c00",
    "ROLLBACK_STARTED": "#ef6c00",
    "FAILED": "#c62828",
    "ROLLBACK_FAILED": "#c62828",
    "ROLLED_BACK": "#1565c0",
    "MANUAL_MARKED_AS_ROLLED_BACK": "#1565c0",
}
STATUS_COLOURS = {
    "SUCCEEDED": "#2e7d32",
    "NO_CHANGES": "#2e7d32",
    "EXECUTED": "#2e7d32",
    "APPROVED": "#2e7d32",
    "RUNNING": "#1565c0",
    "QUEUED": "#1565c0",
    "PENDING": "#1565c0",
    "FAILED": "#c62828",
    "ABORTED": "#c62828",
    "REJECTED": "#c62828",
    "BLOCKED": "#ef6c00",
    "AWAITING_APPROVAL": "#ef6c00",
    "LOCKED": "#ef6c00",
}


def badge(text: str, colour: str):
    return format_html(
        '<span class="flk-badge" style="background:{};color:#fff;padding:1px 6px;border-radius:8px;font-size:11px">{}</span>', colour, text
    )


def state_badge(state: str):
    if not state:
        return format_html('<span style="color:#757575">{}</span>', "not applied")
    return badge(state, STATE_COLOURS.get(state, "#424242"))


def admin_view(model_admin, view):
    return model_admin.admin_site.admin_view(partial(view, model_admin))
