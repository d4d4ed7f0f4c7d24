"""Links from an audit entry to the admin pages of what it names (its change, run, request, finding,
target system and user), and its details as labelled fields.

audit_app is the foundation and imports nothing above it: pages are found by their admin URL names,
and a page that is not installed (no such URL) is simply not linked (docs/decisions.md, "Audit links
by URL name").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from django.contrib.admin.utils import quote as admin_quote
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils.html import conditional_escape, escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

#: kind -> (admin URL name, how the value reaches it: "pk" as the object id, or a changelist parameter).
PAGES: dict[str, tuple[str, str]] = {
    "change": ("admin:changes_app_changerecord_changelist", "change_id"),
    "run": ("admin:changes_app_run_change", "pk"),
    "request": ("admin:changes_app_changerequest_change", "pk"),
    "finding": ("admin:changes_app_finding_change", "pk"),
    "target": ("admin:changes_app_targetsystem_changelist", "name"),
    "user": ("admin:auth_user_change", "pk"),
    "username": ("admin:auth_user_changelist", "username"),
    "entry": ("admin:audit_app_auditentry_change", "pk"),
    "verification": ("admin:audit_app_verification_change", "pk"),
    "checkpoint": ("admin:audit_app_auditcheckpoint_change", "pk"),
}

#: A key of an entry's details -> the kind of page its value names.
DETAIL_KINDS = {
    "change_id": "change",
    "run_id": "run",
    "run": "run",
    "request_id": "request",
    "request": "request",
    "finding": "finding",
    "finding_id": "finding",
    "target": "target",
    "target_system": "target",
    "user": "username",
    "requested_by": "username",
    "request_entry": "entry",
}

#: Labels of the details' keys where the key itself does not read well.
LABELS = {
    "request_id": "Request",
    "run_id": "Run",
    "change_id": "Change",
    "os_user": "Operating-system user",
    "required_approvals": "Required approvals",
    "first_broken_seq": "First broken entry",
    "first_broken_id": "First broken row id",
    "head_seq": "Chain head",
    "request_entry": "Request entry",
    "checkpoint_seq": "From checkpoint",
    "duration_ms": "Duration (ms)",
}


#: Stands for the value in a page's URL, reversed once (a list of 50 entries links about 200 values).
_VALUE = "flk-value-5f1d"
_RESERVED = "!$&'()*+,;=/~:@"  # what reverse() leaves unquoted in a path argument


@functools.lru_cache(maxsize=256)
def _url_template(name: str, how: str, prefix: str, urlconf) -> str:
    try:
        return reverse(name, args=[_VALUE], urlconf=urlconf) if how == "pk" else reverse(name, urlconf=urlconf)
    except NoReverseMatch:
        return ""


def admin_url_maker(kind: str) -> Callable[[Any], str]:
    """:func:`admin_url` for many values: the page's URL looked up once (a list of 50 entries links
    about 200 values; each lookup asks the URL configuration of the request again)."""
    if kind not in PAGES:
        return lambda value: ""
    name, how = PAGES[kind]
    template = _url_template(name, how, get_script_prefix(), get_urlconf())
    if not template:
        return lambda value: ""
    if how == "pk":
        # As the admin quotes an object id in its own links, then as reverse() quotes a path.
        return lambda value: "" if value in (None, "") else template.replace(_VALUE, quote(admin_quote(str(value)), safe=_RESERVED))
    prefix = f"{template}?{quote_plus(how, safe='')}="  # as urlencode({how: value}) writes it
    return lambda value: "" if value in (None, "") else prefix + quote_plus(str(value), safe="")


def admin_url(kind: str, value) -> str:
    """The admin page of ``value`` (a ``kind`` of :data:`PAGES`), or "" where there is none."""
    return admin_url_maker(kind)(value)


def admin_link_maker(kind: str) -> Callable[..., SafeString]:
    """:func:`admin_link` for many values, with the page's URL looked up once."""
    url_of = admin_url_maker(kind)

    def link(value, text=None) -> SafeString:
        url = url_of(value)
        shown = conditional_escape(value if text is None else text)
        return SafeString(f'<a href="{escape(url)}">{shown}</a>') if url else shown

    return link


def admin_link(kind: str, value, text=None) -> SafeString:
    """``value`` as a link to its admin page, or as text when it has none (escaped either way)."""
    return admin_link_maker(kind)(value, text)


def label(key: str) -> str:
    return LABELS.get(key) or capfirst(str(key).replace("_", " "))


def details_html(details) -> SafeString:
    """An entry's details as labelled fields (a definition list), nested values nested, the values
    that name a change, run, request, finding, target or user linked to their pages."""
    if not isinstance(details, Mapping) or not details:
        return mark_safe('<p class="flk-empty">—</p>')
    return format_html(
        '<dl class="flk-details">{}</dl>', format_html_join("", "<dt>{}</dt><dd>{}</dd>", ((label(k), _value(k, v)) for k, v in details.items()))
    )


def _value(key: str, value) -> SafeString:
    if isinstance(value, Mapping):
        return details_html(value)
    if isinstance(value, list):
        if not value:
            return mark_safe("—")
        if all(not isinstance(item, (Mapping, list)) for item in value):
            return format_html_join(", ", "{}", ((_value(key, item),) for item in value))
        return format_html('<ol class="flk-details-list">{}</ol>', format_html_join("", "<li>{}</li>", ((_value(key, item),) for item in value)))
    if value is None or value == "":
        return mark_safe("—")
    if isinstance(value, bool):
        return format_html("{}", "yes" if value else "no")
    kind = DETAIL_KINDS.get(key)
    if kind is not None and isinstance(value, (str, int)):
        return admin_link(kind, value)
    return format_html("{}", value)
